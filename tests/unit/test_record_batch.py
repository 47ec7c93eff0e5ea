"""Record batches built by ingest.record_batch read back through kafka-python's own decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch

from streamrec.ingest.record_batch import (BATCH_OVERHEAD, NO_PRODUCER_ID, RECORD_OVERHEAD,
                                           encode_batch)

# Lengths around the varint steps (zigzag: 1 byte up to 63, 2 bytes up to 8191). The
# long values repeat a random byte: random bytes that long exceed what Hypothesis
# generates per example, and it fails the test as too large now and then.
_BYTES = st.one_of(st.binary(max_size=100), st.binary(min_size=60, max_size=70),
                   st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=1),
                             st.integers(8185, 8195)))
_RECORDS = st.lists(st.tuples(st.none() | _BYTES, _BYTES), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(records=_RECORDS, timestamp=st.integers(0, 2**63 - 1),
       producer=st.sampled_from([(NO_PRODUCER_ID, -1, -1), (0, 0, 0), (7, 3, 2**31 - 5),
                                 (2**62, 2**15 - 1, 12345)]))
def test_kafka_python_reads_every_record_back(records: list[tuple[bytes | None, bytes]],
                                             timestamp: int,
                                             producer: tuple[int, int, int]) -> None:
    _check_round_trip(records, timestamp, producer)


@pytest.mark.parametrize("size", [(1 << 16) - 1, 1 << 16, (1 << 20) + 3])
def test_values_past_the_varint_cache_read_back(size: int) -> None:
    # 3- and 4-byte varints, and lengths the encoder does not cache.
    _check_round_trip([(b"k" * 70, b"v" * size), (None, b"w" * (size + 1))],
                      1_700_000_000_000, (NO_PRODUCER_ID, -1, -1))


def _check_round_trip(records: list[tuple[bytes | None, bytes]], timestamp: int,
                      producer: tuple[int, int, int]) -> None:
    keys = [k for k, _ in records]
    values = [v for _, v in records]
    producer_id, epoch, sequence = producer
    data = encode_batch(keys, values, timestamp, producer_id, epoch, sequence)

    memory = MemoryRecords(data)  # reads the batch length: exactly the buffer
    batch = memory.next_batch()
    assert isinstance(batch, DefaultRecordBatch) and memory.next_batch() is None
    assert batch.validate_crc()
    assert (batch.magic, batch.base_offset, batch.compression_type) == (2, 0, 0)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == producer
    assert not batch.is_transactional and not batch.is_control_batch
    assert batch.last_offset_delta == len(records) - 1
    got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]
    assert got == [(i, timestamp, k, v, []) for i, (k, v) in enumerate(records)]
    # The producer sizes batches by these bounds: they must hold.
    assert len(data) <= BATCH_OVERHEAD + sum(
        len(v) + len(k or b"") + RECORD_OVERHEAD for k, v in records)


def test_a_corrupted_batch_fails_its_crc() -> None:
    data = bytearray(encode_batch([b"u1"], [b'{"type":"click"}'], 1_700_000_000_000))
    data[-3] ^= 0x01
    assert not DefaultRecordBatch(bytes(data)).validate_crc()


@pytest.mark.parametrize("keys, values", [([], []), ([b"k"], [b"a", b"b"])])
def test_bad_input_is_refused(keys: list[bytes], values: list[bytes]) -> None:
    with pytest.raises(ValueError, match="as many keys as values and at least one record"):
        encode_batch(keys, values, 0)

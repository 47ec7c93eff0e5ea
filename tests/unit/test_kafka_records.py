"""The fast reader of fetched record batches yields what kafka-python's own reader does."""

from __future__ import annotations

import itertools
from collections import namedtuple
from collections.abc import Iterator

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record import MemoryRecords
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

from streamrec.ingest import kafka_records
from streamrec.ingest.kafka_records import _FastPartitionRecords
from tests.reference_ops import python_paths

TP = TopicPartition("events", 3)
GZIP = 1
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}  # what producers may send
READ_UNCOMMITTED, READ_COMMITTED = 0, 1
Aborted = namedtuple("Aborted", ["producer_id", "first_offset"])


@pytest.fixture(params=["native", "python"])
def reader(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs with the C reader (records.c) and with the Python one."""
    if request.param == "native":
        yield "native"
    else:
        with python_paths():
            yield "python"


def _batch(offset: int, records: list[tuple], magic: int = 2, compression: int = 0,
           producer_id: int = -1, transactional: bool = False) -> bytes:
    builder = MemoryRecordsBuilder(
        magic, compression, 1 << 22, offset=offset, transactional=transactional,
        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1)
    for timestamp, key, value, headers, skip in records:
        builder.skip(skip)
        assert builder.append(timestamp, key, value, headers if magic == 2 else None)
    builder.close()
    return bytes(builder.buffer())


def _plain(offset: int, n: int, **kw: object) -> bytes:
    return _batch(offset, [(1_700_000_000_000 + i, b"k%d" % i, b'{"i":%d}' % i, [], 0)
                           for i in range(n)], **kw)


def _read(cls: type, data: bytes, take: int, fetch_offset: int = 0,
          isolation: int = READ_UNCOMMITTED, aborted: list | None = None) -> list:
    """Every take()'s records with the position after it, then the counters."""
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=True,
               isolation_level=isolation, aborted_transactions=aborted)
    out = []
    while part:
        records = part.take(take)
        out.append((records, part.next_fetch_offset))
        if not records:
            break
    return [out, part.records_read, part.bytes_read]


def _same(data: bytes, **kw: object) -> list:
    for take in (1, 7, 1000):
        fast = _read(_FastPartitionRecords, data, take, **kw)
        assert fast == _read(Fetcher.PartitionRecords, data, take, **kw)
    return fast[0]


def test_plain_batches_read_as_kafka_python_reads_them(reader: str) -> None:
    """Keys, null keys and values, headers, values over a varint byte, compaction gaps."""
    odd = [
        (1_700_000_000_000, None, b"x" * 300, [], 0),
        (1_700_000_000_000 + 10**9, b"", None, [("h", b"v"), ("\u00e9t\u00e9", None)], 0),
        (1_699_000_000_000, b"k" * 70, b"y" * 20_000, [], 5),  # negative ts delta; offset gap
        (1_700_000_000_001, b"k", b"", [], 100),
    ]
    data = (_plain(0, 50) + _batch(50, odd) + _plain(200, 30, compression=GZIP)
            + _plain(300, 1))
    takes = _same(data)
    values = [r.value for records, _ in takes for r in records]
    assert len(values) == 85 and values[50:54] == [b"x" * 300, None, b"y" * 20_000, b""]
    assert _same(data, fetch_offset=20)[0][0][0].offset == 20  # a fetch from mid-batch


@pytest.mark.parametrize("codec", CODECS)
def test_every_producer_codec_is_read(reader: str, codec: str) -> None:
    """Batches compressed with each codec a Kafka producer may use (librdkafka and
    Java clients often default to lz4 or zstd) read as plain ones do: the codecs
    are dependencies, not optional extras a consumer dies without."""
    data = _plain(0, 40) + _plain(40, 60, compression=CODECS[codec]) + _plain(100, 5)
    values = [r.value for records, _ in _same(data) for r in records]
    assert values == [b'{"i":%d}' % i for n in (40, 60, 5) for i in range(n)]


def test_other_batches_go_to_kafka_pythons_reader(reader: str) -> None:
    """Legacy formats, and transactions under read_committed (an aborted one skipped)."""
    legacy = _plain(0, 5) + _plain(5, 5, magic=1) + _plain(10, 5)
    assert len([r for records, _ in _same(legacy) for r in records]) == 15
    txn = (_plain(0, 5) + _plain(5, 5, producer_id=7, transactional=True)
           + _plain(10, 5, producer_id=8, transactional=True))
    takes = _same(txn, isolation=READ_COMMITTED, aborted=[Aborted(8, 10)])
    assert [r.offset for records, _ in takes for r in records] == list(range(10))


def test_an_idempotent_producers_batches_are_read_fast_under_read_committed(
        reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idempotent producers (Java's default, streamrec replay) give every batch a
    producer id; only transactional ones can be aborted, and only they, with the
    transaction markers, need kafka-python's reader under read_committed."""
    idempotent = _plain(0, 5, producer_id=3) + _plain(5, 5, producer_id=3)
    with monkeypatch.context() as m:
        m.setattr(kafka_records, "_Resumed", None)  # (calling it fails the test)
        fast = _read(_FastPartitionRecords, idempotent, 1000, isolation=READ_COMMITTED)
    assert [r.offset for records, _ in fast[0] for r in records] == list(range(10))
    mixed = idempotent + _plain(10, 5, producer_id=8, transactional=True) + _plain(15, 5,
                                                                               producer_id=3)
    takes = _same(mixed, isolation=READ_COMMITTED, aborted=[Aborted(8, 10)])
    assert [r.offset for records, _ in takes for r in records] == [*range(10), *range(15, 20)]


@pytest.mark.parametrize("check_crcs", [True, False])
def test_a_corrupt_batch_raises_as_kafka_python_does(reader: str, check_crcs: bool) -> None:
    """A failed CRC; unchecked, a record length that overruns the batch."""
    data = bytearray(_plain(0, 10))
    data[-16] = 0x7E  # the last record's length varint (63): past the batch's end
    for cls in (_FastPartitionRecords, Fetcher.PartitionRecords):
        part = cls(0, TP, MemoryRecords(bytes(data)), check_crcs=check_crcs)
        with pytest.raises(CorruptRecordError, match="crc" if check_crcs else "record"):
            list(itertools.islice(part.record_iterator, 100))


def test_kafka_python_checks_crcs_with_the_c_extension() -> None:
    """Without ``crc32c`` kafka-python checks each fetched batch in pure Python: 5x slower reading."""
    import crc32c
    from kafka.record import util

    assert util._crc32c is crc32c.crc32c


def test_another_kafka_pythons_consumer_keeps_its_reader(caplog: pytest.LogCaptureFixture) -> None:
    """A fetcher this module does not know is left alone, with a warning (not a crash)."""
    from streamrec.ingest.kafka_records import install

    class Consumer:
        _fetcher = object()

    with caplog.at_level("WARNING", logger="streamrec.ingest.kafka_records"):
        assert not install(Consumer())  # type: ignore[arg-type]
    assert "read by kafka-python" in caplog.text

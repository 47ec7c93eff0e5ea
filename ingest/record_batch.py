"""Kafka record batches (message format v2, uncompressed) built from many records at once.

The producer's side of :mod:`ingest.kafka_records`: a batch's records share
one timestamp, so each record is its prefix bytes and its key and value,
joined once per batch, with one CRC-32C (the ``crc32c`` C extension) over it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from crc32c import crc32c

__all__ = ["encode_batch", "BATCH_OVERHEAD", "RECORD_OVERHEAD", "NO_PRODUCER_ID"]

NO_PRODUCER_ID = -1  # a batch outside idempotence: producer id, epoch and sequence -1

# BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC: before the CRC'd part.
_PREFIX = struct.Struct(">qiibI")
# Attributes, LastOffsetDelta, FirstTimestamp, MaxTimestamp, ProducerId,
# ProducerEpoch, BaseSequence, record count: the start of the CRC'd part.
_HEADER = struct.Struct(">hiqqqhii")
_MAGIC = 2
BATCH_OVERHEAD = _PREFIX.size + _HEADER.size  # a batch's header, in bytes
# The most a record adds besides its key and value: five varints of at most
# 5 bytes but the timestamp delta (0: 1 byte), attributes and header count.
RECORD_OVERHEAD = 5 * 4 + 1 + 1 + 1
_INT32_MAX = 2**31 - 1


def _varint(value: int) -> bytes:
    """Kafka's signed varint (zigzag, then 7 bits a byte, least significant first)."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Varints(dict[int, bytes]):
    """Each varint below 2^16 encoded once: lengths and offset deltas recur."""

    def __missing__(self, value: int) -> bytes:
        out = _varint(value)
        if -1 <= value < 1 << 16:
            self[value] = out
        return out


_VARINTS = _Varints()
_NULL = _VARINTS[-1]  # the length of a null key


def encode_batch(keys: Sequence[bytes | None], values: Sequence[bytes], timestamp_ms: int,
                 producer_id: int = NO_PRODUCER_ID, producer_epoch: int = -1,
                 base_sequence: int = -1) -> bytes:
    """One record batch of ``values`` (keyed by ``keys``, None: no key), all at ``timestamp_ms``.

    Records carry no headers; the batch is uncompressed, with create-time
    timestamps and base offset 0 (the broker assigns offsets). With a
    producer id, ``base_sequence`` numbers the first record for the broker's
    de-duplication of retries.

    Raises:
        ValueError: no records, keys and values of different lengths, or
            more records than a batch can number.
    """
    count = len(values)
    if count == 0 or len(keys) != count:
        raise ValueError(f"a batch needs as many keys as values and at least one record, "
                         f"got {len(keys)} keys and {count} values")
    if count > _INT32_MAX:
        raise ValueError(f"{count} records: a batch holds at most {_INT32_MAX}")
    varint = _VARINTS
    parts: list[bytes] = []
    extend = parts.extend
    # A record: Length, Attributes (0), TimestampDelta (0), OffsetDelta, Key, Value, Headers (0).
    for delta, (key, value) in enumerate(zip(keys, values)):
        offset_delta = varint[delta]
        value_len = varint[len(value)]
        if key is None:
            body = 4 + len(offset_delta) + len(value_len) + len(value)
            extend((varint[body], b"\0\0", offset_delta, _NULL, value_len, value, b"\0"))
        else:
            key_len = varint[len(key)]
            body = 3 + len(offset_delta) + len(key_len) + len(key) + len(value_len) + len(value)
            extend((varint[body], b"\0\0", offset_delta, key_len, key, value_len, value, b"\0"))
    crcd = b"".join((_HEADER.pack(0, count - 1, timestamp_ms, timestamp_ms, producer_id,
                                  producer_epoch, base_sequence, count), *parts))
    # Length counts from PartitionLeaderEpoch: the epoch, magic, CRC and the CRC'd part.
    return _PREFIX.pack(0, 4 + 1 + 4 + len(crcd), -1, _MAGIC, crc32c(crcd)) + crcd

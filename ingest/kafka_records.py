"""A faster reader of fetched Kafka record batches for kafka-python's consumer.

Common v2 batches are read in C, one call per batch; anything else goes to
kafka-python's own reader: docs/design.md, "The Kafka record reader".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer
from kafka import __version__ as kafka_version
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch

from streamrec import native

__all__ = ["install", "read_batch"]

log = logging.getLogger(__name__)

_READ_COMMITTED = 1  # kafka's IsolationLevel.READ_COMMITTED


def read_batch(batch: DefaultRecordBatch, topic: str, partition: int, leader_epoch: int
               ) -> tuple[list[ConsumerRecord], int]:
    """Every record of a v2 data ``batch`` (decompressed here), and their bytes.

    The records are those kafka-python yields for the batch with no
    deserializers: read in C (``streamrec/native/records.c``) when they have no
    headers, else by kafka-python's record reader.
    Raises :class:`~kafka.errors.CorruptRecordError` where kafka-python would.
    """
    batch._maybe_uncompress()  # noqa: SLF001 (kafka-python's own step, CRC checked before)
    header = batch._header_data  # noqa: SLF001
    ts_type = 1 if header[5] & DefaultRecordBatch.TIMESTAMP_TYPE_MASK else 0
    done = native.kafka_records(bytes(batch._buffer), batch._pos,  # noqa: SLF001
                                header[12], header[0], header[7], header[8], ts_type,
                                ConsumerRecord, topic, partition, leader_epoch)
    if done is not None:
        return done
    out: list[ConsumerRecord] = []
    size = 0
    for record in batch:
        key, value, headers = record.key, record.value, record.headers
        header_size = sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0)
                          for k, v in headers) if headers else -1
        out.append(ConsumerRecord(
            topic, partition, leader_epoch, record.offset, record.timestamp,
            record.timestamp_type, key, value, headers, record.checksum,
            len(key) if key is not None else -1, len(value) if value is not None else -1,
            header_size))
        size += record.size_in_bytes
    return out, size


class _FastPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's fetched partition, read by :func:`read_batch` where it can."""

    def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any,
                        value_deserializer: Any) -> Iterator[ConsumerRecord]:
        if key_deserializer is not None or value_deserializer is not None:
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        batch = records.next_batch()
        while batch is not None:
            # Under read_committed only a transactional batch can belong to an
            # aborted transaction (an idempotent producer's batches have a
            # producer id too, and are read here).
            if (batch.magic != 2 or batch.is_control_batch
                    or (self.isolation_level == _READ_COMMITTED and batch.is_transactional)):
                # kafka-python's reader from this batch on (it also drains at the end).
                yield from super()._unpack_records(tp, _Resumed(batch, records), None, None)
                return
            if self.check_crcs and not batch.validate_crc():
                raise CorruptRecordError(
                    f"Record batch for partition {self.topic_partition} at offset "
                    f"{batch.base_offset} failed crc check")
            self.leader_epoch = batch.leader_epoch
            out, size = read_batch(batch, tp.topic, tp.partition, self.leader_epoch)
            self.records_read += len(out)
            self.bytes_read += size
            for record in out:  # (positions advance per record: take() may stop mid-batch)
                self.next_fetch_offset = record.offset + 1
                yield record
            # Past offsets removed by compaction too, as kafka-python does.
            self.next_fetch_offset = batch.next_offset
            batch = records.next_batch()
        self.drain()


class _Resumed:
    """``records`` with ``batch`` (already taken from it) put back in front."""

    def __init__(self, batch: Any, records: Any) -> None:
        self._batch = batch
        self._records = records

    def next_batch(self) -> Any:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            return batch
        return self._records.next_batch()


def install(consumer: KafkaConsumer) -> bool:
    """Read ``consumer``'s fetches with :func:`read_batch` (same records, less CPU).

    Returns False, with a warning, where this kafka-python's fetcher is not the
    one this module knows: the consumer then reads as kafka-python does.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if getattr(fetcher, "PartitionRecords", None) is not Fetcher.PartitionRecords:
        log.warning("kafka-python %s's fetcher is not the one ingest/kafka_records.py knows: "
                    "fetched records are read by kafka-python (more CPU per record)",
                    kafka_version)
        return False
    fetcher.PartitionRecords = _FastPartitionRecords  # type: ignore[union-attr]
    return True

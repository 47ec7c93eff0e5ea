"""`streamrec replay`: produce a file's events into a Kafka topic, optionally paced."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from tqdm import tqdm

from streamrec.ingest.decode import encode_json, encode_protobuf
from streamrec.ingest.event import Event
from streamrec.ingest.file_source import FileSource

__all__ = ["replay", "ReplayStats"]

log = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    sent: int  # acknowledged by the broker
    skipped_malformed: int
    seconds: float
    failed: int = 0  # refused by the client (too large) or the broker


# Producer settings for a bulk load: records are batched per partition up to
# batch_size (at most one 1 MiB produce request) or linger_ms, uncompressed
# (the trainer's reads pay for decompression, and a local broker gains little).
_PRODUCER = {"acks": "all", "linger_ms": 50, "batch_size": 1 << 20,
             "compression_type": None}


def replay(path: str | os.PathLike[str], topic: str, bootstrap_servers: list[str],
           rate: float | None = None, value_format: str = "json", progress: bool = True
           ) -> ReplayStats:
    """Send every valid event of ``path`` to ``topic``; malformed lines are skipped and counted.

    Messages are keyed by user id, so one user's events stay in order within
    a partition. ``rate`` caps events per second.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate={rate}: must be > 0")
    encode = encode_protobuf if value_format == "protobuf" else encode_json
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, partitioner=_KeyHashes(),
                             **_PRODUCER)
    source = FileSource(path)
    bar = tqdm(desc=f"replay -> {topic}", unit="ev", disable=not progress, file=sys.stderr)
    attempted = skipped = 0
    failures: list[Exception] = []  # appended from the producer's I/O thread too
    started = time.monotonic()
    send = producer.send
    try:
        while not source.exhausted:
            batch = source.poll(1000, 0)
            skipped += len(batch.dead_letters)
            # Encoded before the send loop: the producer's I/O thread then
            # competes with nothing but send() for the GIL.
            records = [(str(e.user_id).encode(), encode(e)) for e in batch.events]
            for event, (key, value) in zip(batch.events, records):
                if rate is not None:
                    due = started + attempted / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                attempted += 1
                try:
                    future = send(topic, key=key, value=value)
                except MessageSizeTooLargeError as e:  # this record only: skip, go on
                    _failed(failures, event, e)
                else:
                    future.add_errback(_failed, failures, event)
            bar.update(len(batch.events))
        producer.flush()
    finally:
        bar.close()
        source.close()
        producer.close()
    return ReplayStats(sent=attempted - len(failures), skipped_malformed=skipped,
                       seconds=time.monotonic() - started, failed=len(failures))


class _KeyHashes(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, as Java's), each
    key hashed once: users recur, and the pure-Python hash was a tenth of a send."""

    _MAX_KEYS = 1 << 20

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: Any, cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value,
                                     cluster)
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self._MAX_KEYS:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        return sorted(partitions)[h % len(partitions)]


def _failed(failures: list[Exception], event: Event, error: Exception) -> None:
    if not failures:  # the first one in full; the count says the rest
        log.warning("event %s (user %d) not produced: %s", event.event_id or "-",
                    event.user_id, error)
    failures.append(error)

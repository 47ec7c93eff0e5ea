"""`streamrec replay`: produce a file's events into a Kafka topic, optionally paced."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError
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
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20)
    source = FileSource(path)
    bar = tqdm(desc=f"replay -> {topic}", unit="ev", disable=not progress, file=sys.stderr)
    attempted = skipped = 0
    failures: list[Exception] = []  # appended from the producer's I/O thread too
    started = time.monotonic()
    try:
        while not source.exhausted:
            batch = source.poll(1000, 0)
            skipped += len(batch.dead_letters)
            for event in batch.events:
                if rate is not None:
                    due = started + attempted / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                attempted += 1
                try:
                    future = producer.send(topic, key=str(event.user_id).encode(),
                                           value=encode(event))
                except MessageSizeTooLargeError as e:  # this record only: skip, go on
                    _failed(failures, event, e)
                else:
                    future.add_errback(lambda e, event=event: _failed(failures, event, e))
            bar.update(len(batch.events))
        producer.flush()
    finally:
        bar.close()
        source.close()
        producer.close()
    return ReplayStats(sent=attempted - len(failures), skipped_malformed=skipped,
                       seconds=time.monotonic() - started, failed=len(failures))


def _failed(failures: list[Exception], event: Event, error: Exception) -> None:
    if not failures:  # the first one in full; the count says the rest
        log.warning("event %s (user %d) not produced: %s", event.event_id or "-",
                    event.user_id, error)
    failures.append(error)

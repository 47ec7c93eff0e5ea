"""`streamrec replay`: produce a file's events into a Kafka topic, optionally paced."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from streamrec.ingest.batch_producer import BatchProducer, ProduceError
from streamrec.ingest.decode import decode_json, encode_json, encode_protobuf
from streamrec.ingest.event import Event
from streamrec.ingest.file_source import FileSource

__all__ = ["replay", "ReplayStats"]

log = logging.getLogger(__name__)

_CHUNK = 1000  # lines read, validated and queued at a time


@dataclass
class ReplayStats:
    sent: int  # acknowledged by the broker
    skipped_malformed: int
    seconds: float
    failed: int = 0  # valid events not acknowledged (the broker refused them, or went away)


def replay(path: str | os.PathLike[str], topic: str, bootstrap_servers: list[str],
           rate: float | None = None, value_format: str = "json", progress: bool = True,
           security: Mapping[str, Any] | None = None) -> ReplayStats:
    """Send every valid event of ``path`` to ``topic``; malformed lines are skipped and counted.

    Messages are keyed by user id, so one user's events stay in order within
    a partition. With ``value_format`` json a JSON line is sent as it is in
    the file (a CSV row as its event's JSON); protobuf sends each event
    encoded. ``rate`` caps events per second. The stats count exactly the
    events the broker acknowledged; a batch that failed for good stops the
    replay there (logged), with the events not acknowledged counted as failed.

    Raises:
        ValueError: a rate not above 0 or an unknown value format.
        kafka.errors.KafkaError: no broker answered.
        ProduceError: the topic has no partitions.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate={rate}: must be > 0")
    if value_format not in ("json", "protobuf"):
        raise ValueError(f"value_format={value_format!r}: must be json or protobuf")
    encode = encode_protobuf if value_format == "protobuf" else encode_json
    lines: list[bytes] = []  # this poll's JSON lines that decoded, as they are

    def keep(raw: bytes) -> Event:
        event = decode_json(raw)
        lines.append(raw)
        return event

    source = FileSource(path, decode=keep if value_format == "json" else None)
    try:
        producer = BatchProducer(bootstrap_servers, topic, client_id="streamrec-replay",
                                 security=security)
    except BaseException:
        source.close()
        raise
    # Paced, a poll holds ~10 ms of events, so pacing is no coarser than that.
    chunk = _CHUNK if rate is None else max(1, min(_CHUNK, int(rate / 100)))
    bar = tqdm(desc=f"replay -> {topic}", unit="ev", disable=not progress, file=sys.stderr)
    attempted = skipped = 0
    started = time.monotonic()
    try:
        while not source.exhausted:
            lines.clear()
            batch = source.poll(chunk, 0)
            skipped += len(batch.dead_letters)
            events = batch.events
            keys: list[bytes | None] = [str(e.user_id).encode() for e in events]
            # JSON lines went through keep(); CSV rows (and protobuf) are encoded.
            values = lines if len(lines) == len(events) else [encode(e) for e in events]
            while rate is not None and (delay := started + attempted / rate
                                        - time.monotonic()) > 0:
                producer.poll(delay)  # (reads answers while it waits)
            attempted += len(events)
            producer.send(keys, values)
            bar.update(len(events))
        producer.flush()
    except ProduceError as e:
        log.error("replay into %s stopped: %s", topic, e)
    finally:
        bar.close()
        source.close()
        producer.close()
    return ReplayStats(sent=producer.acked, skipped_malformed=skipped,
                       seconds=time.monotonic() - started, failed=attempted - producer.acked)

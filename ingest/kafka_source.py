"""Events from Kafka topics through a kafka-python consumer group.

Offsets are committed only when the training loop says so — after a
checkpoint that covers them — never automatically. On restart the loop
seeks to the offsets stored in its checkpoint, which win over the group's
committed ones: a trainer killed between writing a checkpoint and
committing would otherwise learn the events in between twice.

A rebalance (a member joining or leaving, a coordinator restart, a poll
interval exceeded) revokes and reassigns partitions. A partition this
process keeps continues after the last record it delivered — not at the last
commit, which trails training by up to a checkpoint interval, nor at the
checkpoint it started from. A partition that went to another member and
comes back later starts from the group's committed offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamrec.ingest import kafka_records
from streamrec.ingest.event import Event
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import DeadLetter, SourceBatch, decode_values
from streamrec.config import IngestConfig

__all__ = ["KafkaSource", "consumer_settings", "create_topics"]

log = logging.getLogger(__name__)


class _SeekOnAssign(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.source._seek_assigned(assigned, rebalance=True)


# A commit runs on the training loop's thread, and kafka-python's default
# waits out its 30 s request timeout while it looks for a coordinator that is
# gone (a broker down): every checkpoint, and a shutdown, stalled that long.
# Failing sooner loses nothing: the checkpoint holds the offsets, and the next
# commit covers these.
_COMMIT_TIMEOUT_MS = 5_000
# The same for reading partitions' first and end offsets (_check_ends), and how long
# to wait before trying again.
_OFFSETS_TIMEOUT_MS = 2_000
_OFFSETS_RETRY_S = 30.0


def consumer_settings(config: IngestConfig) -> dict[str, Any]:
    """The ``KafkaConsumer`` arguments of a :class:`KafkaSource` (benchmarks compare with it)."""
    return {
        "bootstrap_servers": config.bootstrap_servers,
        "group_id": config.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": config.session_timeout_ms,
        "heartbeat_interval_ms": max(100, config.session_timeout_ms // 6),
        "max_poll_records": config.max_poll_records,
        "client_id": f"streamrec-{config.group_id}",
    }


class KafkaSource:
    """An :class:`~ingest.source.EventSource` over ``config.topics`` in ``config.group_id``."""

    def __init__(self, config: IngestConfig, metrics: IngestMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        # Checkpoint offsets not read from yet, and the next offset after the
        # last record delivered per partition (see the module docstring).
        self._seek_to: dict[tuple[str, int], int] = {}
        self._delivered: dict[tuple[str, int], int] = {}
        # Checkpoint offsets not yet compared with their partition's end (see
        # _check_ends), when to try again after a failure, and partitions reset
        # to their start whose new offset the next poll reports.
        self._unchecked: set[tuple[str, int]] = set()
        self._check_after = 0.0
        self._reset: dict[tuple[str, int], int] = {}
        # Lag as of the last poll. Prometheus scrapes from its own thread and
        # KafkaConsumer is not thread-safe (position() may talk to the
        # coordinator), so the polling thread measures and the scrape reads.
        self._lag: dict[tuple[str, int], int] = {}
        self._consumer = KafkaConsumer(**consumer_settings(config))
        kafka_records.install(self._consumer)  # same records, a third of the CPU
        self._consumer.subscribe(config.topics, listener=_SeekOnAssign(self))
        if metrics is not None:
            metrics.watch_lag(self.lag)

    @property
    def exhausted(self) -> bool:
        return False

    def _seek_assigned(self, assigned: set[TopicPartition], rebalance: bool = False) -> None:
        # (Runs on the consumer's IO thread: seek() only, no blocking calls.)
        if rebalance:
            keys = {(tp.topic, tp.partition) for tp in assigned}
            for key in (set(self._delivered) | set(self._seek_to)) - keys:
                # Gone to another member: if it comes back, that member's
                # commit (the group's offset) is where to go on, not our old
                # position nor the checkpoint we started from.
                self._delivered.pop(key, None)
                self._seek_to.pop(key, None)
                self._unchecked.discard(key)
                self._reset.pop(key, None)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if key in self._seek_to:
                offset = self._seek_to[key]
                log.info("%s/%d: resuming at checkpoint offset %d", tp.topic, tp.partition, offset)
            elif key in self._delivered:
                offset = self._delivered[key]
                log.info("%s/%d: reassigned; continuing at offset %d", tp.topic, tp.partition,
                         offset)
            else:
                continue
            self._consumer.seek(tp, offset)

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._seek_to.update(offsets)
        self._unchecked.update(offsets)
        self._seek_assigned(set(self._consumer.assignment()))

    def _check_ends(self) -> None:
        """Read from the start any partition whose checkpoint offset is past its end.

        The topic was deleted and recreated, or truncated, since the checkpoint.
        Kafka answers a fetch there with OFFSET_OUT_OF_RANGE and the consumer
        resets to the earliest offset; a broker that answers with no records
        instead (Tansu) would have the trainer wait for the new log to grow
        past the old offset and skip everything before it, silently. Once per
        checkpoint offset, on the polling thread (end_offsets blocks).
        """
        assigned = {(tp.topic, tp.partition): tp for tp in self._consumer.assignment()}
        todo = [assigned[key] for key in self._unchecked if key in assigned]
        if not todo or time.monotonic() < self._check_after:
            return
        try:
            ends = self._consumer.end_offsets(todo, timeout_ms=_OFFSETS_TIMEOUT_MS)
            starts = self._consumer.beginning_offsets(todo, timeout_ms=_OFFSETS_TIMEOUT_MS)
        except KafkaError as e:
            # (Broker unreachable: the training loop must not block on this every poll.)
            self._check_after = time.monotonic() + _OFFSETS_RETRY_S
            log.warning("could not read partition offsets (retrying in %.0f s): %s",
                        _OFFSETS_RETRY_S, e)
            return
        for tp in todo:
            key = (tp.topic, tp.partition)
            self._unchecked.discard(key)
            end, offset = ends.get(tp), self._seek_to.get(key)
            if end is not None and offset is not None and offset > end:
                start = starts.get(tp, 0)
                log.warning("%s/%d: checkpoint offset %d is past the end of the partition "
                            "(%d): the topic was recreated or truncated; reading it from "
                            "the start (%d)", tp.topic, tp.partition, offset, end, start)
                self._seek_to.pop(key)
                self._consumer.seek(tp, start)
                # The old offset must leave the loop's checkpoints and commits too,
                # even if the new log stays empty: reported by the next poll.
                self._delivered[key] = self._reset[key] = start

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        if self._unchecked:
            self._check_ends()
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_events)
        events: list[Event] = []
        dead: list[DeadLetter] = []
        origins: list[tuple[str, int]] = []
        offsets: dict[tuple[str, int], int] = {}
        for tp, messages in polled.items():
            if not messages:
                continue
            key = (tp.topic, tp.partition)
            good, bad = decode_values([m.value or b"" for m in messages],
                                      _origin(tp.topic, tp.partition, messages),
                                      self.config.value_format, self.metrics, "kafka")
            events += good
            dead += bad
            origins += [key] * len(good)
            offsets[key] = messages[-1].offset + 1
        for key, offset in offsets.items():
            self._delivered[key] = offset
            self._seek_to.pop(key, None)  # read from: the position supersedes the checkpoint
            self._unchecked.discard(key)
        for key, start in self._reset.items():
            offsets.setdefault(key, start)
        self._reset.clear()
        if self.metrics is not None:
            self._lag = self._measure_lag()
        assigned = [(tp.topic, tp.partition) for tp in self._consumer.assignment()]
        return SourceBatch(events=events, dead_letters=dead, offsets=offsets, origins=origins,
                           assigned=assigned)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        # Only partitions this consumer still owns: after a rebalance the new
        # owner starts from the last commit (or its own checkpoint).
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        todo = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in offsets.items() if (t, p) in owned}
        if not todo:
            return
        try:
            self._consumer.commit(todo, timeout_ms=_COMMIT_TIMEOUT_MS)
        except KafkaError as e:
            if self.metrics is not None:
                self.metrics.commits.labels("error").inc()
            log.warning("offset commit failed (events will be re-read after a restart): %s", e)
            return
        if self.metrics is not None:
            self.metrics.commits.labels("ok").inc()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between each owned partition's position and its high watermark.

        As of the last :meth:`poll` (measured only when metrics are attached);
        partitions not fetched yet have no known high watermark and are absent.
        Safe to call from another thread.
        """
        return dict(self._lag)

    def _measure_lag(self) -> dict[tuple[str, int], int]:
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                # Known locally once fetching started; 0 ms never blocks the loop.
                position = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.unwatch_lag(self.lag)
        self._lag = {}
        self._consumer.close(autocommit=False)


def _origin(topic: str, partition: int, messages: list[Any]) -> Callable[[int], str]:
    """Names ``messages[i]`` for its dead letter (formatted only for the records refused)."""
    return lambda i: f"{topic}/{partition}@{messages[i].offset}"


def create_topics(bootstrap: str | list[str], topics: list[str], partitions: int = 1,
                  replication: int = 1) -> None:
    """Create ``topics`` (existing ones are left alone)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin")
    try:
        for topic in topics:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()

"""Events from Kafka topics through a kafka-python consumer group.

Offsets are committed only after a checkpoint covers them; a restart seeks to
the checkpoint's offsets. Rebalances and replaced logs: docs/design.md, "The Kafka source".

Trainer ranks (trainer.ranks) do not join the group: each is assigned a fixed
share of the partitions, so that its checkpoint owns them (docs/ranks.md).
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
from streamrec.ingest.kafka_lag import EndOffsets
from streamrec.ingest.kafka_security import client_security
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import DeadLetter, SourceBatch, decode_values
from streamrec.config import IngestConfig
from streamrec.errors import ConfigError

__all__ = ["KafkaSource", "consumer_settings", "create_topics", "partition_share"]

log = logging.getLogger(__name__)


class _SeekOnAssign(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.source._seek_assigned(assigned, rebalance=True)


# How often the consumer refreshes topic metadata, where replaced logs show
# (kafka-python's default, 5 minutes, let a recreated topic's new records be read
# from the old log's offset for that long).
_METADATA_MAX_AGE_MS = 5_000
# A commit still unanswered after this long no longer holds the next one back.
_COMMIT_STALE_S = 30.0
# How long close() waits for the last commit (the loop's final checkpoint's).
_CLOSE_COMMIT_TIMEOUT_MS = 5_000


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
        "metadata_max_age_ms": _METADATA_MAX_AGE_MS,
        "client_id": f"streamrec-{config.group_id}",
        "isolation_level": config.isolation_level,
        **client_security(config),
    }


class KafkaSource:
    """An :class:`~ingest.source.EventSource` over ``config.topics`` in ``config.group_id``.

    Each topic's log is known by its Kafka topic id (KIP-516), which polls report
    (``SourceBatch.logs``) for the checkpoint and :meth:`seek` takes back. A topic
    whose id differs from the checkpoint's, or changes while it is read (deleted and
    recreated, or another cluster behind the same address), is a replaced log: it is
    read from its start, with a warning and
    ``streamrec_ingest_log_replacements_total``. Nothing else rewinds a partition.

    A replacement shows at the next metadata refresh (every 5 s): records a new
    log already holds past the old offset by then are read before it and again
    after (kafka-python fetches by topic name, Fetch v12 at most; fetching by topic
    id, v13, would have the broker refuse them).
    """

    def __init__(self, config: IngestConfig, metrics: IngestMetrics | None = None,
                 share: tuple[int, int] | None = None) -> None:
        """``share=(rank, world)``: read only the partitions :func:`partition_share` gives
        ``rank`` (assigned, not subscribed: no rebalancing), instead of joining the group."""
        self.config = config
        self.metrics = metrics
        self._init_state()
        self._consumer = KafkaConsumer(**consumer_settings(config))
        kafka_records.install(self._consumer)  # same records, a third of the CPU
        if share is None:
            self._consumer.subscribe(config.topics, listener=_SeekOnAssign(self))
        else:
            try:
                self._consumer.assign(partition_share(self._consumer, config.topics, *share))
            except Exception:
                self._consumer.close(autocommit=False)
                raise
        if metrics is not None:
            self._ends = EndOffsets(config.bootstrap_servers, f"streamrec-{config.group_id}-lag",
                                    lambda: self._assigned, security=client_security(config))
            metrics.watch_lag(self.lag)
            for topic in config.topics:  # exported at 0 from the start (rate() needs it)
                for evidence in ("topic_id", "out_of_range"):
                    metrics.log_replacements.labels(topic, evidence)

    def _init_state(self) -> None:
        # Checkpoint offsets not read from yet, and the next offset after the
        # last record delivered per partition (see the module docstring).
        self._seek_to: dict[tuple[str, int], int] = {}
        self._delivered: dict[tuple[str, int], int] = {}
        # Partitions whose log was replaced: the new offset the next poll reports.
        self._reset: dict[tuple[str, int], int] = {}
        # The topic id of the log each topic's offsets belong to (the checkpoint's,
        # else the first one seen).
        self._logs: dict[str, str] = {}
        self._no_ids_logged = False
        # The newest offsets asked to be committed and not sent yet, and when the
        # commit in flight was sent (None: none in flight).
        self._commit_wanted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._commit_sent: dict[TopicPartition, OffsetAndMetadata] = {}
        self._commit_sent_at: float | None = None
        # The lag's terms: per partition the position and high watermark as of the
        # last poll, and the end offsets listed on their own thread (EndOffsets).
        # Prometheus scrapes from its own thread and KafkaConsumer is not
        # thread-safe, so the polling thread measures and the scrape reads.
        self._positions: dict[tuple[str, int], tuple[int, int]] = {}
        self._assigned: list[tuple[str, int]] = []
        self._ends: EndOffsets | None = None

    @property
    def exhausted(self) -> bool:
        return False

    def _topic_id(self, topic: str) -> str | None:
        """The topic's id in the consumer's latest metadata; None when unknown.

        (Brokers answering Metadata below v10 send none; a deleted topic has none.)
        """
        # kafka-python keeps the ids on its cluster metadata, which KafkaConsumer
        # exposes under no public name.
        cluster = getattr(self._consumer, "_cluster", None)
        found = cluster.topic_id(topic) if cluster is not None else None
        return str(found) if found is not None else None

    def _seek_assigned(self, assigned: set[TopicPartition], rebalance: bool = False) -> None:
        # (Runs on the consumer's IO thread: seeks only, no blocking calls.)
        if rebalance:
            keys = {(tp.topic, tp.partition) for tp in assigned}
            for key in (set(self._delivered) | set(self._seek_to)) - keys:
                # Gone to another member: if it comes back, that member's
                # commit (the group's offset) is where to go on, not our old
                # position nor the checkpoint we started from.
                self._delivered.pop(key, None)
                self._seek_to.pop(key, None)
                self._reset.pop(key, None)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            known, now = self._logs.get(tp.topic), self._topic_id(tp.topic)
            if known is not None and now is not None and known != now:
                # A replaced log: its start, not the old log's offsets (the next
                # poll counts it and reports the new offset).
                self._consumer.seek(tp, 0)
                continue
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

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        """Resume at ``offsets``, of the logs ``logs`` names (topic -> topic id)."""
        self._logs.update(logs or {})
        self._seek_to.update(offsets)
        self._seek_assigned(set(self._consumer.assignment()))

    def _check_logs(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Compare each topic's id with the one its offsets belong to; drop what a
        replaced log delivered at the old log's offsets and read it from its start."""
        for topic in self.config.topics:
            now = self._topic_id(topic)
            if now is None:
                if not self._no_ids_logged and self._consumer.assignment():
                    self._no_ids_logged = True
                    log.warning("the broker reports no topic ids: a replaced topic is "
                                "noticed only by its out-of-range answer")
                continue
            known = self._logs.setdefault(topic, now)
            if known == now:
                continue
            self._logs[topic] = now
            parts = [tp for tp in self._consumer.assignment() if tp.topic == topic]
            log.warning("topic %s was replaced (topic id %s -> %s): reading its partitions "
                        "from their start", topic, known, now)
            if self.metrics is not None:
                self.metrics.log_replacements.labels(topic, "topic_id").inc()
            # Offset 0 is at or before the new log's start (a fetch below the start is
            # answered out of range, and the consumer resets to the earliest offset);
            # the start itself takes a blocking request. Partitions assigned later go
            # there too, not to the group's commits, which belong to the old log.
            for key in list(self._seek_to):
                if key[0] == topic:
                    self._seek_to[key] = 0
            for tp in parts:
                polled.pop(tp, None)
                key = (tp.topic, tp.partition)
                self._consumer.seek(tp, 0)
                # The old offset must leave the loop's checkpoints and commits now,
                # even while the new log is empty.
                self._delivered[key] = self._reset[key] = 0

    def _check_back(self, key: tuple[str, int], first: int) -> None:
        """Count a partition the consumer sent back behind where this source put it.

        Only the client's reset after the broker's out-of-range answer does that:
        the log was truncated, or replaced where no topic id told (its records are
        read, as the new log's, from its start).
        """
        expected = self._delivered.get(key, self._seek_to.get(key))
        if expected is None or first >= expected:
            return
        log.warning("%s/%d: the broker answered offset %d out of range and the consumer went "
                    "back to %d: the log was truncated or replaced; reading it from there",
                    key[0], key[1], expected, first)
        if self.metrics is not None:
            self.metrics.log_replacements.labels(key[0], "out_of_range").inc()

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        self._send_commit()
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_events)
        self._check_logs(polled)
        events: list[Event] = []
        dead: list[DeadLetter] = []
        origins: list[tuple[str, int]] = []
        offsets: dict[tuple[str, int], int] = {}
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for tp, messages in polled.items():
            if not messages:
                continue
            key = (tp.topic, tp.partition)
            self._check_back(key, messages[0].offset)
            good, bad = decode_values([m.value or b"" for m in messages],
                                      _origin(tp.topic, tp.partition, messages),
                                      self.config.value_format, self.metrics, "kafka")
            events += good
            dead += bad
            origins += [key] * len(good)
            offsets[key] = messages[-1].offset + 1
            spans[key] = (messages[0].offset, len(messages))
        for key, offset in offsets.items():
            self._delivered[key] = offset
            self._seek_to.pop(key, None)  # read from: the position supersedes the checkpoint
        for key, start in self._reset.items():
            offsets.setdefault(key, start)
        self._reset.clear()
        assigned = [(tp.topic, tp.partition) for tp in self._consumer.assignment()]
        if self.metrics is not None:
            self._positions = self._measure_positions()
            self._assigned = assigned
        return SourceBatch(events=events, dead_letters=dead, offsets=offsets, origins=origins,
                           assigned=assigned, spans=spans, logs=dict(self._logs))

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit ``offsets`` without blocking: sent now, or after the commit in flight.

        Commits go out one at a time, so they reach the broker in order; a newer one
        replaces a waiting one. A failed commit is logged and counted: the checkpoint
        holds the offsets, and the next commit covers these.
        """
        # Only partitions this consumer still owns: after a rebalance the new
        # owner starts from the last commit (or its own checkpoint).
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        self._commit_wanted.update({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                    for (t, p), o in offsets.items() if (t, p) in owned})
        self._send_commit()

    def _send_commit(self) -> None:
        if not self._commit_wanted:
            return
        if self._commit_sent_at is not None \
                and time.monotonic() - self._commit_sent_at < _COMMIT_STALE_S:
            return
        todo, self._commit_wanted = self._commit_wanted, {}
        self._commit_sent, self._commit_sent_at = todo, time.monotonic()
        try:
            self._consumer.commit_async(todo, callback=self._committed)
        except KafkaError as e:
            self._committed(todo, e)

    def _committed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata],
                   result: object) -> None:
        # (kafka-python calls this from poll() or commit_async(), on the loop's thread.)
        if offsets is self._commit_sent:
            self._commit_sent, self._commit_sent_at = {}, None
        ok = not isinstance(result, BaseException)
        if self.metrics is not None:
            self.metrics.commits.labels("ok" if ok else "error").inc()
        if not ok:
            log.warning("offset commit failed (the next one covers these; a restart "
                        "resumes at the checkpoint's offsets): %s", result)

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between each owned partition's position and its end.

        The end is the larger of the high watermark of the last fetch and the end
        offset listed every few seconds (see ingest.kafka_lag); positions are as of
        the last :meth:`poll` (measured only when metrics are attached). Partitions
        not fetched yet are absent. Safe to call from another thread.
        """
        ends = self._ends.get() if self._ends is not None else {}
        return {key: max(0, high - position, ends.get(key, 0) - position)
                for key, (position, high) in self._positions.items()}

    def _measure_positions(self) -> dict[tuple[str, int], tuple[int, int]]:
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
                out[(tp.topic, tp.partition)] = (position, high)
        return out

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.unwatch_lag(self.lag)
        self._positions = {}
        if self._ends is not None:
            self._ends.close()
        # The final checkpoint's offsets, and any commit still unanswered (closing
        # abandons it): worth a short wait.
        todo = {**self._commit_sent, **self._commit_wanted}
        if todo:
            self._commit_wanted, self._commit_sent = {}, {}
            try:
                self._consumer.commit(todo, timeout_ms=_CLOSE_COMMIT_TIMEOUT_MS)
                self._committed(todo, None)
            except KafkaError as e:
                self._committed(todo, e)
        self._consumer.close(autocommit=False)


def partition_share(consumer: KafkaConsumer, topics: list[str], rank: int, world: int,
                    timeout_s: float = 30.0) -> list[TopicPartition]:
    """The partitions of ``topics`` that rank ``rank`` of ``world`` reads: ``p % world == rank``.

    Raises :class:`ConfigError` when a topic does not exist (within ``timeout_s``) or has
    fewer partitions than there are ranks (a rank would learn nothing of it).
    """
    deadline = time.monotonic() + timeout_s
    out = []
    for topic in topics:
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() >= deadline:
                raise ConfigError(f"ingest.topics: topic {topic!r} does not exist (no partitions "
                                 f"listed within {timeout_s:.0f} s)")
            time.sleep(0.5)
        if len(partitions) < world:
            raise ConfigError(f"ingest.topics: topic {topic!r} has {len(partitions)} "
                             f"partition(s), fewer than the {world} trainer ranks")
        out += [TopicPartition(topic, p) for p in sorted(partitions) if p % world == rank]
    return out


def _origin(topic: str, partition: int, messages: list[Any]) -> Callable[[int], str]:
    """Names ``messages[i]`` for its dead letter (formatted only for the records refused)."""
    return lambda i: f"{topic}/{partition}@{messages[i].offset}"


def create_topics(bootstrap: str | list[str], topics: list[str], partitions: int = 1,
                  replication: int = 1, security: Mapping[str, Any] | None = None) -> None:
    """Create ``topics`` (existing ones are left alone)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin",
                             **(security or {}))
    try:
        for topic in topics:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()

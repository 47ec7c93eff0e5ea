"""Where KafkaSource resumes each partition across rebalances (no broker: a fake consumer).

The rebalance listener runs on the consumer's IO thread, so these decisions
are made from what the source remembers, not by asking the coordinator.
The integration test against Tansu covers a real rebalance.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from streamrec.ingest.kafka_source import KafkaSource, _SeekOnAssign
from streamrec.ingest.metrics import IngestMetrics

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
RECORD = b'{"type":"example","user_id":1,"item_id":2,"timestamp_ms":1700000000000,"label":1}'


class FakeCluster:
    def __init__(self) -> None:
        self.ids: dict[str, uuid.UUID] = {"t": uuid.UUID(int=1)}

    def topic_id(self, topic: str) -> uuid.UUID | None:
        return self.ids.get(topic)


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []
        self.position = 100  # partition 0's
        self._cluster = FakeCluster()
        self.commits: list[tuple[dict[TopicPartition, OffsetAndMetadata], Any]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))
        if tp == P0:
            self.position = offset

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[object]]:
        # Five records of partition 0 only (fetches come a partition at a time).
        if P0 not in self.assigned:
            return {}
        first, self.position = self.position, self.position + 5
        return {P0: [SimpleNamespace(value=RECORD, offset=o) for o in range(first, first + 5)]}

    def highwater(self, tp: TopicPartition) -> None:
        return None  # (no lag measured)

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                     callback: Any) -> None:
        self.commits.append((offsets, callback))  # answered when the test says


def fake_source() -> tuple[KafkaSource, FakeConsumer, _SeekOnAssign]:
    source = KafkaSource.__new__(KafkaSource)  # no broker: only the seek bookkeeping
    source.config = SimpleNamespace(value_format="json", topics=["t"])
    source.metrics = IngestMetrics(CollectorRegistry())
    source._init_state()
    source._consumer = consumer = FakeConsumer()
    return source, consumer, _SeekOnAssign(source)


def rebalance(consumer: FakeConsumer, listener: _SeekOnAssign, *parts: TopicPartition) -> None:
    consumer.assigned = set(parts)
    consumer.seeks.clear()
    listener.on_partitions_assigned(set(parts))


def replacements(source: KafkaSource, evidence: str = "topic_id") -> float:
    metric = source.metrics.log_replacements  # type: ignore[union-attr]
    return float(metric.labels("t", evidence)._value.get())


def test_kept_partitions_go_on_and_returning_ones_start_at_the_groups_commit() -> None:
    source, consumer, listener = fake_source()
    source.seek({("t", 0): 100, ("t", 1): 200})  # resume: the checkpoint's offsets
    rebalance(consumer, listener, P0, P1)  # the first assignment
    assert sorted(consumer.seeks) == [(0, 100), (1, 200)]
    source.poll(5, 0.1)  # read p0 up to 104; nothing of p1 yet
    rebalance(consumer, listener, P0, P1)  # both kept
    assert sorted(consumer.seeks) == [(0, 105), (1, 200)]
    rebalance(consumer, listener, P0)  # p1 goes to another member, which reads on and commits
    rebalance(consumer, listener, P0, P1)  # p1 comes back
    assert sorted(consumer.seeks) == [(0, 105)]  # p1: no seek, the group's commit holds


def test_a_checkpoint_offset_is_kept_whatever_end_the_broker_reports() -> None:
    # Tansu reports a partition's end low (the start of its last batch): an offset
    # "past the end" proves nothing, and the checkpoint's offsets are where to go on.
    source, consumer, listener = fake_source()
    source.seek({("t", 0): 100, ("t", 1): 200}, {"t": str(uuid.UUID(int=1))})
    rebalance(consumer, listener, P0, P1)
    assert sorted(consumer.seeks) == [(0, 100), (1, 200)]
    got = source.poll(5, 0.1)
    assert got.offsets == {("t", 0): 105} and got.spans == {("t", 0): (100, 5)}
    assert got.logs == {"t": str(uuid.UUID(int=1))}
    assert replacements(source) == 0


def test_a_topic_replaced_since_the_checkpoint_is_read_from_its_start() -> None:
    source, consumer, listener = fake_source()
    consumer._cluster.ids["t"] = uuid.UUID(int=2)  # recreated while the trainer was down
    source.seek({("t", 0): 100, ("t", 1): 200}, {"t": str(uuid.UUID(int=1))})
    rebalance(consumer, listener, P0, P1)
    assert sorted(consumer.seeks) == [(0, 0), (1, 0)]
    got = source.poll(5, 0.1)
    # The loop learns the new offsets now, so that no checkpoint or commit keeps
    # the old log's 100 and 200 (which, once the new log grew past them, would skip
    # its head); what came at the old offset is not delivered.
    assert got.events == [] and got.offsets == {("t", 0): 0, ("t", 1): 0}
    assert got.logs == {"t": str(uuid.UUID(int=2))}
    assert replacements(source) == 1
    assert len(source.poll(5, 0.1).events) == 5  # the new log, from its start
    assert replacements(source) == 1


def test_a_topic_replaced_before_its_partitions_are_assigned_starts_them_at_0() -> None:
    source, consumer, listener = fake_source()
    source.seek({("t", 0): 100, ("t", 1): 200}, {"t": str(uuid.UUID(int=1))})
    consumer._cluster.ids["t"] = uuid.UUID(int=2)
    source.poll(5, 0.1)  # (metadata before the group's assignment)
    rebalance(consumer, listener, P0, P1)
    assert sorted(consumer.seeks) == [(0, 0), (1, 0)] and replacements(source) == 1


def test_a_topic_replaced_while_read_is_read_again_from_its_start() -> None:
    source, consumer, listener = fake_source()
    rebalance(consumer, listener, P0)
    assert len(source.poll(5, 0.1).events) == 5
    consumer._cluster.ids["t"] = uuid.UUID(int=3)  # a metadata refresh shows a new id
    consumer.seeks.clear()
    got = source.poll(5, 0.1)
    assert got.events == [] and got.offsets == {("t", 0): 0}
    assert consumer.seeks == [(0, 0)] and replacements(source) == 1
    del consumer._cluster.ids["t"]  # deleted: no id, no decision
    assert len(source.poll(5, 0.1).events) == 5 and replacements(source) == 1


def test_commits_never_wait_and_go_out_one_at_a_time_in_order() -> None:
    source, consumer, listener = fake_source()
    rebalance(consumer, listener, P0, P1)
    source.commit({("t", 0): 10})
    source.commit({("t", 0): 20, ("t", 1): 5})  # while the first is unanswered
    source.commit({("t", 0): 30})
    assert [{tp.partition: m.offset for tp, m in c[0].items()} for c in consumer.commits] \
        == [{0: 10}]
    offsets, callback = consumer.commits[0]
    callback(offsets, KafkaTimeoutError("coordinator not available"))
    source.poll(5, 0.1)  # sends the newest offsets of each partition
    assert {tp.partition: m.offset for tp, m in consumer.commits[1][0].items()} == {0: 30, 1: 5}
    consumer.commits[1][1](consumer.commits[1][0], object())
    commits = source.metrics.commits  # type: ignore[union-attr]
    assert (commits.labels("ok")._value.get(), commits.labels("error")._value.get()) == (1, 1)


def test_a_partition_the_consumer_sends_back_is_counted() -> None:
    # The broker answered out of range and kafka-python reset to the earliest
    # offset (a truncated log, or one replaced where no topic id tells).
    source, consumer, listener = fake_source()
    rebalance(consumer, listener, P0)
    assert source.poll(5, 0.1).offsets == {("t", 0): 105}
    consumer.position = 0  # the client's own reset
    got = source.poll(5, 0.1)
    assert got.spans == {("t", 0): (0, 5)} and len(got.events) == 5  # read from there
    assert replacements(source, "out_of_range") == 1 and replacements(source) == 0
    source.poll(5, 0.1)
    assert replacements(source, "out_of_range") == 1

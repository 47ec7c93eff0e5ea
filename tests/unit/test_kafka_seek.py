"""Where KafkaSource resumes each partition across rebalances (no broker: a fake consumer).

The rebalance listener runs on the consumer's IO thread, so these decisions
are made from what the source remembers, not by asking the coordinator.
The integration test against Tansu covers a real rebalance.
"""

from __future__ import annotations

from types import SimpleNamespace

from kafka.structs import TopicPartition

from ingest.kafka_source import KafkaSource, _SeekOnAssign

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
RECORD = b'{"type":"example","user_id":1,"item_id":2,"timestamp_ms":1700000000000,"label":1}'


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []
        self.ends: dict[int, int] = {}  # partition -> end offset (default 1000)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends.get(tp.partition, 1000) for tp in partitions}

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, 0))

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[object]]:
        # Five records of partition 0 only: fetches come a partition at a time.
        return {P0: [SimpleNamespace(value=RECORD, offset=o) for o in range(100, 105)]}


def fake_source() -> tuple[KafkaSource, FakeConsumer, _SeekOnAssign]:
    source = KafkaSource.__new__(KafkaSource)  # no broker: only the seek bookkeeping
    source.config = SimpleNamespace(value_format="json")
    source.metrics = None
    source._seek_to, source._delivered, source._lag, source._unchecked = {}, {}, {}, set()
    source._consumer = consumer = FakeConsumer()
    return source, consumer, _SeekOnAssign(source)


def rebalance(consumer: FakeConsumer, listener: _SeekOnAssign, *parts: TopicPartition) -> None:
    consumer.assigned = set(parts)
    consumer.seeks.clear()
    listener.on_partitions_assigned(set(parts))


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


def test_a_checkpoint_offset_past_a_partitions_end_is_read_from_the_start() -> None:
    # The topic was recreated since the checkpoint: its offsets belong to the old log.
    source, consumer, listener = fake_source()
    consumer.ends = {0: 105, 1: 50}
    source.seek({("t", 0): 100, ("t", 1): 200})
    rebalance(consumer, listener, P0, P1)
    consumer.seeks.clear()
    source.poll(5, 0.1)  # compares each checkpoint offset with its partition's end, once
    assert consumer.seeks == [(1, 0)]  # p1 from the start; p0 (100 <= 105) as it was
    rebalance(consumer, listener, P0, P1)
    assert sorted(consumer.seeks) == [(0, 105)]  # p1's stale checkpoint offset is gone

"""Where KafkaSource resumes each partition across rebalances (no broker: a fake consumer).

The rebalance listener runs on the consumer's IO thread, so these decisions
are made from what the source remembers, not by asking the coordinator.
The integration test against Tansu covers a real rebalance.
"""

from __future__ import annotations

from types import SimpleNamespace

from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from streamrec.ingest.kafka_source import KafkaSource, _SeekOnAssign

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
RECORD = b'{"type":"example","user_id":1,"item_id":2,"timestamp_ms":1700000000000,"label":1}'


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []
        self.ends: dict[int, int] = {}  # partition -> end offset (default 1000)
        self.starts: dict[int, int] = {}  # partition -> first offset (default 0)
        self.broker_down = False
        self.offset_requests = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int
                    ) -> dict[TopicPartition, int]:
        self.offset_requests += 1
        if self.broker_down:
            raise KafkaTimeoutError("Failed to get offsets by timestamps in 2000 ms")
        return {tp: self.ends.get(tp.partition, 1000) for tp in partitions}

    def beginning_offsets(self, partitions: list[TopicPartition], timeout_ms: int
                          ) -> dict[TopicPartition, int]:
        return {tp: self.starts.get(tp.partition, 0) for tp in partitions}

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[object]]:
        # Five records of partition 0 only: fetches come a partition at a time.
        return {P0: [SimpleNamespace(value=RECORD, offset=o) for o in range(100, 105)]}


def fake_source() -> tuple[KafkaSource, FakeConsumer, _SeekOnAssign]:
    source = KafkaSource.__new__(KafkaSource)  # no broker: only the seek bookkeeping
    source.config = SimpleNamespace(value_format="json")
    source.metrics = None
    source._seek_to, source._delivered, source._lag, source._unchecked = {}, {}, {}, set()
    source._check_after, source._reset = 0.0, {}
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
    consumer.ends, consumer.starts = {0: 105, 1: 50}, {1: 7}
    source.seek({("t", 0): 100, ("t", 1): 200})
    rebalance(consumer, listener, P0, P1)
    consumer.seeks.clear()
    got = source.poll(5, 0.1)  # compares each checkpoint offset with its partition's end, once
    assert consumer.seeks == [(1, 7)]  # p1 from its start; p0 (100 <= 105) as it was
    # The loop learns p1's new offset now, so that no checkpoint or commit keeps the
    # old log's 200 (which, once the new log grew past it, would skip 7..199).
    assert got.offsets == {("t", 0): 105, ("t", 1): 7}
    assert source.poll(5, 0.1).offsets == {("t", 0): 105}
    rebalance(consumer, listener, P0, P1)
    assert sorted(consumer.seeks) == [(0, 105), (1, 7)]
    assert consumer.offset_requests == 1


def test_partition_offsets_out_of_reach_do_not_stall_every_poll() -> None:
    source, consumer, listener = fake_source()
    consumer.broker_down = True
    source.seek({("t", 1): 200})
    rebalance(consumer, listener, P1)
    source.poll(5, 0.1)
    source.poll(5, 0.1)
    assert consumer.offset_requests == 1  # the next try waits (_OFFSETS_RETRY_S)
    consumer.broker_down, consumer.ends = False, {1: 50}
    source._check_after = 0.0  # (the retry time has come)
    source.poll(5, 0.1)
    assert consumer.offset_requests == 2 and (1, 0) in consumer.seeks

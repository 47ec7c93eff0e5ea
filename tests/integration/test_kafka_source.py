"""KafkaSource against a real Kafka-protocol broker: consume, dead-letter, commit, seek, replay."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from streamrec.ingest.deadletter import KafkaDeadLetterSink
from streamrec.ingest.decode import encode_json, encode_protobuf
from streamrec.ingest.kafka_source import KafkaSource, create_topics
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.replay import replay
from streamrec.ingest.source import DeadLetter, SourceBatch
from streamrec.config import IngestConfig
from streamrec.synthetic import SyntheticStream, default, write_jsonl

pytestmark = pytest.mark.integration


def source(broker: str, topic: str, group: str, metrics: IngestMetrics | None = None
           ) -> KafkaSource:
    return KafkaSource(IngestConfig(bootstrap_servers=[broker], topics=[topic], group_id=group,
                                    session_timeout_ms=6000, poll_timeout_ms=500), metrics)


def drain(src: KafkaSource, want: int, polls: int = 60, max_events: int = 1000) -> SourceBatch:
    out = SourceBatch(events=[], origins=[])
    for _ in range(polls):
        got = src.poll(max_events, 0.5)
        assert got.origins is not None and len(got.origins) == len(got.events)
        out.events += got.events
        out.origins += got.origins  # type: ignore[operator]
        out.dead_letters += got.dead_letters
        out.offsets.update(got.offsets)
        out.assigned = got.assigned
        if len(out.events) + len(out.dead_letters) >= want:
            break
    return out


def test_consume_route_bad_records_commit_and_resume(kafka_broker: str) -> None:
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=2)
    events = list(SyntheticStream(default()).events(200))
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for i, e in enumerate(events[:100]):
        producer.send(topic, key=str(e.user_id).encode(),
                      value=encode_json(e) if i % 2 else encode_protobuf(e))
    producer.send(topic, key=b"x", value=b'{"type": "click", "user_id": 1}')
    producer.flush()

    registry = CollectorRegistry()
    first = source(kafka_broker, topic, group, IngestMetrics(registry))

    def lag() -> dict[str, float]:
        return {s.labels["partition"]: s.value for m in registry.collect()
                if m.name == "streamrec_ingest_consumer_lag_records" for s in m.samples}

    got = drain(first, 1, max_events=5)
    assert sum(lag().values()) > 0  # fetched, not yet returned
    # Polls name the whole assignment, partitions that delivered or not (the
    # joiner waits for those it has not heard from).
    assert sorted(got.assigned or []) == [(topic, 0), (topic, 1)]
    rest_of_first = drain(first, 101 - len(got.events) - len(got.dead_letters))
    got.events += rest_of_first.events
    got.origins += rest_of_first.origins  # type: ignore[operator]
    got.dead_letters += rest_of_first.dead_letters
    got.offsets.update(rest_of_first.offsets)
    assert lag() == {"0": 0, "1": 0}
    assert registry.get_sample_value("streamrec_ingest_records_total", {"source": "kafka"}) == 101
    assert registry.get_sample_value("streamrec_ingest_dead_letters_total",
                                     {"kind": "missing_field"}) == 1
    assert sorted(e.event_id for e in got.events) == sorted(e.event_id for e in events[:100])
    # Each event's partition: the producer keys by user, so one user's are in one.
    partition_of = {}
    assert got.origins is not None and len(got.origins) == len(got.events)
    for event, (origin_topic, partition) in zip(got.events, got.origins):
        assert origin_topic == topic
        assert partition_of.setdefault(event.user_id, partition) == partition
    assert [d.kind for d in got.dead_letters] == ["missing_field"]
    assert got.dead_letters[0].origin.startswith(f"{topic}/")
    assert sum(got.offsets.values()) == 101  # next offset per partition covers everything
    first.commit(got.offsets)
    assert registry.get_sample_value("streamrec_ingest_commits_total", {"result": "ok"}) == 1
    first.close()
    assert lag() == {}  # a closed source reports nothing

    for e in events[100:]:
        producer.send(topic, key=str(e.user_id).encode(), value=encode_json(e))
    producer.flush()
    producer.close()
    # A new member of the group resumes after the committed offsets.
    second = source(kafka_broker, topic, group)
    rest = drain(second, 100)
    assert sorted(e.event_id for e in rest.events) == sorted(e.event_id for e in events[100:])
    second.close()

    # A checkpoint's offsets win over the committed ones (here: back to the start).
    third = source(kafka_broker, topic, group)
    third.seek({(topic, 0): 0, (topic, 1): 0})
    again = drain(third, 201)
    assert len(again.events) == 200 and len(again.dead_letters) == 1
    third.close()


def test_replay_produces_a_file_for_the_trainer_to_consume(kafka_broker: str,
                                                          tmp_path: Path) -> None:
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 300, default())
    with path.open("a") as f:
        f.write("not an event\n")
    stats = replay(path, topic, [kafka_broker], progress=False)
    assert (stats.sent, stats.skipped_malformed) == (300, 1)
    src = source(kafka_broker, topic, f"g-{uuid.uuid4().hex[:8]}")
    got = drain(src, 300)
    src.close()
    assert [e.event_id for e in got.events] == [f"e{i}" for i in range(300)]


def test_kafka_dead_letter_sink_keeps_the_raw_record_and_the_reason(kafka_broker: str) -> None:
    topic = f"dead-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    letters = [DeadLetter(raw=b"\xff\x00 not an event", kind="malformed", reason="not JSON",
                          origin="events/0@17"),
               DeadLetter(raw=b'{"type": "click"}', kind="missing_field",
                          reason="missing field 'user_id'", origin="events/1@3")]
    sink = KafkaDeadLetterSink([kafka_broker], topic)
    sink.put(letters)
    sink.close()  # flushes
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition(topic, 0)])
    got = [(m.value, dict(m.headers)) for _, m in zip(range(2), consumer)]
    consumer.close()
    assert got == [(d.raw, {"kind": d.kind.encode(), "reason": d.reason.encode(),
                            "origin": d.origin.encode()}) for d in letters]


def test_a_rebalance_continues_after_the_last_delivered_record(kafka_broker: str) -> None:
    # Resumed from a checkpoint at offset 10, read to 100, committed only 50
    # (commits trail training by a checkpoint interval). A member joining and
    # leaving the group (reading another topic) revokes and reassigns the
    # partition twice: the source must go on from 100, neither from the
    # commit (50) nor from the checkpoint (10).
    #
    # Sometimes the broker expels the source from the group and kafka-python
    # does not rejoin within a minute; then nothing at all arrives. That is a
    # liveness problem of the test's broker and client, not of the seek logic,
    # so the scenario runs again (at most three times) on a fresh topic and
    # group. Whatever is delivered is checked.
    for _ in range(3):
        assignments, again, events = _rebalance_scenario(kafka_broker)
        if again:
            break
    # (The group did rebalance: the first assignment, then at least one more.)
    assert assignments.count(True) >= 2, assignments
    assert [e.event_id for e in again] == [e.event_id for e in events[100:]]


def _rebalance_scenario(kafka_broker: str) -> tuple[list[bool], list[Any], list[Any]]:
    import time

    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic, topic + "-other"], partitions=1)
    events = list(SyntheticStream(default()).events(120))
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for e in events[:100]:
        producer.send(topic, encode_json(e))
    producer.flush()
    src = source(kafka_broker, topic, group)
    assignments: list[bool] = []
    seek_assigned = src._seek_assigned

    def counted(assigned: set[TopicPartition], rebalance: bool = False) -> None:
        assignments.append(rebalance)
        seek_assigned(assigned, rebalance)

    src._seek_assigned = counted  # type: ignore[method-assign]
    src.seek({(topic, 0): 10})
    first = drain(src, 90)
    assert [e.event_id for e in first.events] == [e.event_id for e in events[10:100]]
    src.commit({(topic, 0): 50})
    other = KafkaConsumer(bootstrap_servers=kafka_broker, group_id=group,
                          enable_auto_commit=False, session_timeout_ms=6000,
                          heartbeat_interval_ms=500)
    other.subscribe([topic + "-other"])
    again: list[Any] = []
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and not other.assignment():
        other.poll(100)
        again += src.poll(1000, 0.1).events
    other.close()
    for e in events[100:]:
        producer.send(topic, encode_json(e))
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(again) < 20:
        again += src.poll(1000, 0.2).events
    src.close()
    return assignments, again, events


_COMMIT_AFTER_KILL = """
import json, sys, time
from prometheus_client import CollectorRegistry
from streamrec.ingest.metrics import IngestMetrics
from tests.integration.test_kafka_source import drain, source
registry = CollectorRegistry()
src = source(sys.argv[1], sys.argv[2], sys.argv[3], IngestMetrics(registry))
got = drain(src, 20)
print(len(got.events), flush=True)
sys.stdin.readline()  # the broker is gone now
time.sleep(4)  # the heartbeat thread finds the group coordinator gone
started = time.monotonic()
src.commit(got.offsets)
print(json.dumps([time.monotonic() - started, registry.get_sample_value(
    "streamrec_ingest_commits_total", {"result": "error"})]), flush=True)
"""


def test_a_commit_to_a_broker_that_went_away_fails_within_seconds() -> None:
    # Commits run on the training loop's thread. With kafka-python's default
    # each waited out a 30 s timeout looking for the group's coordinator: a
    # SIGTERM with the broker down took ~57 s (past docker compose's 30 s
    # stop grace period). The consumer runs in a process of its own:
    # kafka-python abandons the sockets of a broker that died under it.
    import json
    import os
    import subprocess
    import sys

    from tests.integration.conftest import start_broker

    root = Path(__file__).resolve().parents[2]
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    with start_broker() as (address, broker):
        create_topics(address, [topic], partitions=1)
        producer = KafkaProducer(bootstrap_servers=address)
        for e in SyntheticStream(default()).events(20):
            producer.send(topic, encode_json(e))
        producer.flush()
        producer.close()
        with subprocess.Popen(
                [sys.executable, "-c", _COMMIT_AFTER_KILL, address, topic, group],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}) as child:
            try:
                assert child.stdout is not None and child.stdin is not None
                assert child.stdout.readline().strip() == "20"
                broker.kill()
                broker.wait()
                child.stdin.write("go\n")
                child.stdin.flush()
                seconds, errors = json.loads(child.stdout.readline())
            finally:
                child.kill()
    assert errors == 1
    assert seconds < 15


def test_a_checkpoint_offset_past_the_end_of_the_log_reads_it_from_the_start(
        kafka_broker: str, caplog: pytest.LogCaptureFixture) -> None:
    # A topic deleted and recreated (or truncated) under a trainer: its checkpoint
    # holds offsets of the old log. Waiting for the new log to grow past them would
    # skip everything before silently; Kafka's answer is OFFSET_OUT_OF_RANGE and a
    # reset to the earliest offset, which some brokers (Tansu) never send.
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for e in SyntheticStream(default()).events(10):
        producer.send(topic, value=encode_json(e))
    producer.flush()
    producer.close()
    src = source(kafka_broker, topic, group)
    try:
        src.seek({(topic, 0): 1000})  # from the old log
        with caplog.at_level("WARNING", logger="streamrec.ingest.kafka_source"):
            got = drain(src, want=10, polls=30)
    finally:
        src.close()
    assert len(got.events) == 10
    assert got.offsets == {(topic, 0): 10}
    assert "past the end of the partition" in caplog.text
    # A new log still empty: the old offset must still leave the next checkpoint and
    # commit (kept, it would skip the new log's first records once it grew past it).
    empty = f"t-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [empty], partitions=1)
    src = source(kafka_broker, empty, group + "-2")
    try:
        src.seek({(empty, 0): 1000})
        reported: dict[tuple[str, int], int] = {}
        for _ in range(30):
            reported.update(src.poll(100, 0.5).offsets)
            if reported:
                break
    finally:
        src.close()
    assert reported == {(empty, 0): 0}

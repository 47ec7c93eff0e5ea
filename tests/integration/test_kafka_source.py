"""KafkaSource against a real Kafka-protocol broker: consume, dead-letter, commit, seek, replay."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from ingest.decode import encode_json, encode_protobuf
from ingest.kafka_source import KafkaSource, create_topics
from ingest.replay import replay
from ingest.source import SourceBatch
from streamrec.config import IngestConfig
from streamrec.synthetic import SyntheticStream, default, write_jsonl

pytestmark = pytest.mark.integration


def source(broker: str, topic: str, group: str) -> KafkaSource:
    return KafkaSource(IngestConfig(bootstrap_servers=[broker], topics=[topic], group_id=group,
                                    session_timeout_ms=6000, poll_timeout_ms=500))


def drain(src: KafkaSource, want: int, polls: int = 60) -> SourceBatch:
    out = SourceBatch(events=[])
    for _ in range(polls):
        got = src.poll(1000, 0.5)
        out.events += got.events
        out.dead_letters += got.dead_letters
        out.offsets.update(got.offsets)
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

    first = source(kafka_broker, topic, group)
    got = drain(first, 101)
    assert sorted(e.event_id for e in got.events) == sorted(e.event_id for e in events[:100])
    assert [d.kind for d in got.dead_letters] == ["missing_field"]
    assert got.dead_letters[0].origin.startswith(f"{topic}/")
    assert sum(got.offsets.values()) == 101  # next offset per partition covers everything
    first.commit(got.offsets)
    first.close()

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

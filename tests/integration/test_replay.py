"""`streamrec replay` and its batch producer against a real broker: each line once, in order."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.partitioner.default import murmur2
from kafka.structs import TopicPartition

from streamrec.ingest.batch_producer import BatchProducer
from streamrec.ingest.decode import decode_json, event_to_dict
from streamrec.ingest.kafka_source import create_topics
from streamrec.ingest.replay import replay
from streamrec.synthetic import SyntheticStream, default
from tests.integration.conftest import start_broker
from tests.integration.kafka_proxy import AnswerDroppingProxy
from tests.integration.processes import free_port

pytestmark = pytest.mark.integration


def _topic(broker: str, partitions: int) -> str:
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    create_topics(broker, [topic], partitions=partitions)
    return topic


def _event_file(path: Path, n: int) -> list[bytes]:
    """``n`` events as JSON lines in a form replay must not rewrite (spaces, string
    user ids), with malformed lines between them; returns the good lines."""
    good = []
    with path.open("wb") as f:
        for i, event in enumerate(SyntheticStream(default()).events(n)):
            data = event_to_dict(event)
            if i % 7 == 0:
                data["user_id"] = f"user-{event.user_id}"  # hashed to an id by decoding
            line = json.dumps(data).encode()  # ", " and ": ": not the compact form
            good.append(line)
            f.write(line + b"\n")
            if i % 500 == 250:
                f.write(b'{"type": "click", "user_id": 1}\nnot an event\n')
    return good


def _read_back(broker: str, topic: str, partitions: int, expected: int
               ) -> dict[int, list[ConsumerRecord]]:
    """Every record of ``topic`` by partition: ``expected`` of them, then a second
    to show that no more arrive."""
    consumer = KafkaConsumer(bootstrap_servers=broker, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    got: dict[int, list[ConsumerRecord]] = {p: [] for p in range(partitions)}
    try:
        empty_polls = 0
        while empty_polls < (2 if sum(map(len, got.values())) >= expected else 60):
            polled = consumer.poll(timeout_ms=500)
            empty_polls = 0 if polled else empty_polls + 1
            for tp, records in polled.items():
                got[tp.partition] += records
    finally:
        consumer.close()
    return got


def _partition(key: bytes, partitions: int) -> int:
    """kafka-python's (and Java's) default partitioner for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_replay_sends_each_line_once_as_it_is_in_order_per_partition(
        kafka_broker: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = _event_file(path, 3000)
    topic = _topic(kafka_broker, 3)

    stats = replay(path, topic, [kafka_broker], progress=False)

    assert (stats.sent, stats.skipped_malformed, stats.failed) == (3000, 12, 0)
    got = _read_back(kafka_broker, topic, 3, 3000)
    for partition, records in got.items():
        keys = [str(decode_json(line).user_id).encode() for line in good]
        # The lines as they are in the file, in file order, keyed by user id.
        want = [(k, line) for k, line in zip(keys, good) if _partition(k, 3) == partition]
        assert [(r.key, r.value) for r in records] == want
        assert [r.offset for r in records] == list(range(len(want)))
    assert all(got.values())


def test_replay_paced_sends_every_line(kafka_broker: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = _event_file(path, 300)
    topic = _topic(kafka_broker, 1)

    stats = replay(path, topic, [kafka_broker], rate=3000, progress=False)

    assert (stats.sent, stats.failed) == (300, 0)
    assert [r.value for r in _read_back(kafka_broker, topic, 1, 300)[0]] == good


def test_records_without_a_key_go_round_the_partitions_in_order(kafka_broker: str) -> None:
    topic = _topic(kafka_broker, 3)
    values = [b"value %d" % i for i in range(2000)]
    with BatchProducer([kafka_broker], topic, batch_bytes=2048) as producer:
        for start in range(0, len(values), 100):
            producer.send([None] * 100, values[start:start + 100])
        producer.flush(60)
        assert producer.acked == len(values)
    got = _read_back(kafka_broker, topic, 3, len(values))
    # Sticky batches, turn by turn: every partition gets some, each value
    # arrives once, and each partition holds its values in the order sent.
    assert all(got.values())
    assert sorted(r.value for records in got.values() for r in records) == sorted(values)
    for records in got.values():
        assert [r.value for r in records] == sorted((r.value for r in records),
                                                    key=values.index)
        assert all(r.key is None for r in records)


@pytest.fixture()
def proxied_broker() -> Iterator[tuple[str, AnswerDroppingProxy]]:
    """A broker that clients reach through a proxy losing the 1st and 3rd Produce answers."""
    port, proxy_port = free_port(), free_port()
    proxy = AnswerDroppingProxy(proxy_port, port, drop={1, 3})
    try:
        with start_broker(port=port, advertised_port=proxy_port) as (address, _):
            yield address, proxy
    finally:
        proxy.close()


def test_a_lost_answer_is_retried_without_writing_twice(
        proxied_broker: tuple[str, AnswerDroppingProxy], tmp_path: Path) -> None:
    broker, proxy = proxied_broker
    path = tmp_path / "events.jsonl"
    good = _event_file(path, 6000)
    topic = _topic(broker, 1)

    stats = replay(path, topic, [broker], progress=False)

    assert proxy.dropped == 2  # the broker wrote those batches; their answers were lost
    assert (stats.sent, stats.failed) == (6000, 0)
    assert [r.value for r in _read_back(broker, topic, 1, 6000)[0]] == good

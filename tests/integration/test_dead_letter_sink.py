"""KafkaDeadLetterSink never stops training: oversized records are truncated to fit one
produce request, and records the producer refuses are logged and counted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from streamrec.ingest.deadletter import KafkaDeadLetterSink
from streamrec.ingest.kafka_source import create_topics
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import DeadLetter

pytestmark = pytest.mark.integration

DROPPED = "streamrec_ingest_dead_letters_dropped_total"


def letters() -> list[DeadLetter]:
    return [DeadLetter(raw=b"\x00garbage" * 200_000, kind="malformed", reason="not JSON",
                       origin="events/0@5"),
            DeadLetter(raw=b'{"type": "click"}', kind="missing_field",
                       reason="missing field 'user_id'", origin="events/0@6")]


def test_a_dead_letter_over_the_request_size_is_truncated_and_forwarded(
        kafka_broker: str) -> None:
    topic = f"dead-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    registry = CollectorRegistry()
    sink = KafkaDeadLetterSink([kafka_broker], topic, IngestMetrics(registry))
    big, small = letters()
    sink.put([big, small])  # 1.6 MB used to raise MessageSizeTooLargeError here
    sink.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000,
                             fetch_max_bytes=4 << 20, max_partition_fetch_bytes=4 << 20)
    consumer.assign([TopicPartition(topic, 0)])
    got = [(m.value, dict(m.headers)) for _, m in zip(range(2), consumer)]
    consumer.close()
    assert len(got) == 2
    (value, headers), second = got
    assert (1 << 19) < len(value) < (1 << 20) and big.raw.startswith(value)
    assert headers == {"kind": b"malformed", "reason": b"not JSON", "origin": b"events/0@5",
                       "truncated_from": str(len(big.raw)).encode()}
    assert second == (small.raw, {"kind": b"missing_field",
                                  "reason": b"missing field 'user_id'", "origin": b"events/0@6"})
    assert registry.get_sample_value(DROPPED) == 0


def test_a_dead_letter_the_producer_refuses_is_counted_not_raised(
        kafka_broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = f"dead-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    registry = CollectorRegistry()
    sink = KafkaDeadLetterSink([kafka_broker], topic, IngestMetrics(registry))
    sends: list[dict[str, Any]] = []
    rejected_later = Future()

    def send(topic: str, **kwargs: Any) -> Future:
        sends.append(kwargs)
        if len(sends) == 1:  # the broker's metadata never arrives
            raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")
        return rejected_later  # accepted by the client, rejected by the broker

    monkeypatch.setattr(sink._producer, "send", send)
    sink.put(letters())
    assert len(sends) == 2 and registry.get_sample_value(DROPPED) == 1
    rejected_later.failure(MessageSizeTooLargeError("over the topic's max.message.bytes"))
    assert registry.get_sample_value(DROPPED) == 2 and sink.dropped == 2
    monkeypatch.undo()
    sink.close()

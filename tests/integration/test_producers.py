"""Events produced by another Kafka client, librdkafka (the C client under
confluent-kafka, Go, .NET and many services), with each compression codec it
offers: the source reads every one exactly once."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from streamrec.ingest.decode import encode_json
from streamrec.ingest.kafka_source import create_topics
from streamrec.synthetic import SyntheticStream, default
from tests.integration.test_kafka_source import drain, source

pytestmark = pytest.mark.integration

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def test_librdkafka_batches_of_every_codec_are_read_once(kafka_broker: str) -> None:
    topic, group = f"rdk-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=2)
    events = list(SyntheticStream(default()).events(100 * len(CODECS)))
    for i, codec in enumerate(CODECS):
        producer = Producer({"bootstrap.servers": kafka_broker, "compression.type": codec,
                             "linger.ms": 20, "batch.num.messages": 1000})
        failed: list[str] = []
        for e in events[100 * i:100 * (i + 1)]:
            producer.produce(topic, key=str(e.user_id).encode(), value=encode_json(e),
                             on_delivery=lambda err, _msg: failed.append(str(err)) if err else None)
        assert producer.flush(30) == 0 and not failed, (codec, failed)

    src = source(kafka_broker, topic, group)
    try:
        got = drain(src, len(events))
    finally:
        src.close()
    assert not got.dead_letters
    assert sorted(e.event_id for e in got.events) == sorted(e.event_id for e in events)

"""The batch producer's partitioning, retries and refusals, against a broker stand-in."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from kafka.future import Future
from kafka.record.default_records import DefaultRecordBatch

from streamrec.ingest import replay as replay_module
from streamrec.ingest.batch_producer import BatchProducer, KeyPartitioner, ProduceError
from streamrec.ingest.decode import encode_json
from streamrec.synthetic import SyntheticStream, default

NOT_LEADER, MESSAGE_TOO_LARGE, DUPLICATE_SEQUENCE, INVALID_RECORD = 6, 10, 46, 87


class Broker:
    """A ``KafkaNetClient`` stand-in: one node leading ``partitions``, writing
    what it is sent with the broker's de-duplication by sequence.

    ``script`` says how each Produce request goes, in turn (then ``ok``):
    ``ok``; ``lost`` (written, then the connection drops before the answer);
    or an error code answered for every partition, nothing written. A batch
    over ``max_bytes`` is answered MESSAGE_TOO_LARGE.
    """

    def __init__(self, partitions: int = 1, script: list[Any] | None = None,
                 max_bytes: int = 1 << 30) -> None:
        self.log: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in
                                                                 range(partitions)}
        self.requests = 0
        self._script = list(script or [])
        self._max_bytes = max_bytes
        self._next_sequence = dict.fromkeys(range(partitions), 0)
        self._pending: list[tuple[Future, Any]] = []
        self.cluster = SimpleNamespace(
            add_topic=lambda topic: Future().success(None),
            partitions_for_topic=lambda topic: set(range(partitions)),
            leader_for_partition=lambda tp: 0, request_update=Future)

    def check_version(self, timeout_ms: int) -> tuple[int, int]:
        return (3, 9)

    def api_version(self, operation: Any, max_version: int) -> int:
        return 4

    def least_loaded_node(self, bootstrap_fallback: bool = False) -> int:
        return 0

    def send_and_receive(self, node: int, request: Any, timeout_ms: int) -> Any:
        return SimpleNamespace(error_code=0, producer_id=7, producer_epoch=0)

    def ready(self, node: int) -> bool:
        return True

    def send(self, node: int, request: Any) -> Future:
        future = Future()
        self._pending.append((future, request))
        return future

    def poll(self, timeout_ms: float | None = None, future: Future | None = None) -> None:
        pending, self._pending = self._pending, []
        for future, request in pending:
            self._answer(future, request)

    def close(self) -> None:
        pass

    def _answer(self, future: Future, request: Any) -> None:
        self.requests += 1
        action = self._script.pop(0) if self._script else "ok"
        codes = {}
        for data in request.topic_data[0].partition_data:
            codes[data.index] = action if isinstance(action, int) else self._write(
                data.index, data.records)
        if action == "lost":
            future.failure(KafkaConnectionError("socket disconnected"))
            return
        future.success(SimpleNamespace(responses=[SimpleNamespace(partition_responses=[
            SimpleNamespace(index=p, error_code=code) for p, code in codes.items()])]))

    def _write(self, partition: int, records: bytes) -> int:
        if len(records) > self._max_bytes:
            return MESSAGE_TOO_LARGE
        batch = DefaultRecordBatch(records)
        assert batch.validate_crc() and batch.producer_id == 7
        if batch.base_sequence < self._next_sequence[partition]:
            return DUPLICATE_SEQUENCE
        assert batch.base_sequence == self._next_sequence[partition], "out of order"
        written = [(r.key, r.value) for r in batch]
        self.log[partition] += written
        self._next_sequence[partition] += len(written)
        return 0


def _producer(broker: Broker, **kw: Any) -> BatchProducer:
    return BatchProducer(["stand-in:9092"], "t", client=broker, retry_backoff_s=0, **kw)


def _records(n: int) -> tuple[list[bytes], list[bytes]]:
    return [b"u%d" % (i % 7) for i in range(n)], [b"value %d" % i for i in range(n)]


@pytest.mark.parametrize("script", [[NOT_LEADER], ["lost"], ["ok", "lost", NOT_LEADER, "lost"]])
def test_retries_write_each_record_once_in_order(script: list[Any]) -> None:
    broker = Broker(script=script)
    keys, values = _records(500)
    with _producer(broker, batch_bytes=2048) as producer:
        for start in range(0, 500, 50):
            producer.send(keys[start:start + 50], values[start:start + 50])
        producer.flush()
        assert producer.acked == 500
    assert broker.log[0] == list(zip(keys, values))
    assert broker.requests > len(script)  # (the failed ones were sent again)


def test_an_error_that_is_not_retriable_stops_and_names_itself() -> None:
    broker = Broker(script=["ok", INVALID_RECORD])
    keys, values = _records(300)
    producer = _producer(broker, batch_bytes=2048)
    producer.send(keys, values)
    with pytest.raises(ProduceError, match=r"t/0: a batch of \d+ records failed "
                                           r"\(\[Error 87\] InvalidRecordError; not retriable\)"):
        producer.flush()
    assert producer.acked == len(broker.log[0]) > 0
    with pytest.raises(ProduceError):  # and it stays failed
        producer.send(keys, values)


def test_retriable_errors_give_up_after_the_delivery_timeout() -> None:
    broker = Broker(script=[NOT_LEADER] * 10_000)
    producer = _producer(broker, delivery_timeout_s=0.05)
    producer.send(*_records(10))
    with pytest.raises(ProduceError, match="NotLeaderForPartitionError.*still failing"):
        producer.flush()
    assert producer.acked == 0 and broker.log[0] == []


def test_a_partition_without_a_leader_gives_up_after_the_delivery_timeout() -> None:
    broker = Broker()
    broker.cluster.leader_for_partition = lambda tp: -1  # (metadata says: no leader)
    producer = _producer(broker, delivery_timeout_s=0.05)
    producer.send(*_records(10))
    with pytest.raises(ProduceError, match="LeaderNotAvailableError: no leader known"):
        producer.flush()
    assert broker.requests == 0


def test_replay_skips_a_record_too_large_but_stops_when_kafka_does_not_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One oversized record is that record's problem (its batch is split until
    # it stands alone); a broker that does not answer stops the replay at once.
    events = list(SyntheticStream(default()).events(6))
    lines = [encode_json(e) for e in events]
    lines[1] = lines[1].replace(b'"features":{', b'"features":{"pad":"%s",' % (b"x" * 3000))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))

    broker = Broker(max_bytes=2000)
    monkeypatch.setattr(replay_module, "BatchProducer",
                        functools.partial(BatchProducer, client=broker, retry_backoff_s=0))
    stats = replay_module.replay(path, "t", ["h:9092"], progress=False)
    assert (stats.sent, stats.failed) == (5, 1)
    assert [value for _, value in broker.log[0]] == lines[:1] + lines[2:]

    class Unanswered(Broker):
        def check_version(self, timeout_ms: int) -> tuple[int, int]:
            raise KafkaTimeoutError("no metadata")

    monkeypatch.setattr(replay_module, "BatchProducer",
                        functools.partial(BatchProducer, client=Unanswered()))
    with pytest.raises(KafkaTimeoutError):
        replay_module.replay(path, "t", ["h:9092"], progress=False)


def test_replay_partitions_keys_as_kafkas_default_partitioner() -> None:
    """A user's events land where Java's and kafka-python's producers put that key."""
    from kafka.cluster import ClusterMetadata
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster(ClusterMetadata):  # type: ignore[misc]
        def __init__(self, n: int) -> None:
            self.n = n

        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(self.n))

        def available_partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(self.n))

    for n in (1, 3, 12):
        ours = KeyPartitioner(range(n))
        keys = [str(i).encode() for i in range(-50, 500)] * 2  # twice: the memo too
        assert ours(keys, -1) == [DefaultPartitioner().partition("t", key, key, b"", b"",
                                                                 Cluster(n)) for key in keys]
    assert KeyPartitioner([0, 1])([None, b"1"], 1)[0] == 1  # no key: the partition given

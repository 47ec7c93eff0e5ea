"""A producer of many records to one Kafka topic, in record batches it builds itself.

Records are partitioned in bulk, encoded a batch at a time
(:mod:`ingest.record_batch`) and sent in Produce requests through kafka-python's
own client; docs/design.md ("The batch producer") says how and why.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from itertools import accumulate
from dataclasses import dataclass, field

import kafka.errors as Errors
from kafka.net.compat import KafkaNetClient
from kafka.partitioner.default import murmur2
from kafka.protocol.producer import InitProducerIdRequest, ProduceRequest
from kafka.structs import TopicPartition

from streamrec.errors import StreamrecError
from streamrec.ingest.record_batch import (BATCH_OVERHEAD, NO_PRODUCER_ID, RECORD_OVERHEAD,
                                           encode_batch)

__all__ = ["BatchProducer", "KeyPartitioner", "ProduceError"]

log = logging.getLogger(__name__)

_SEQUENCE_MASK = 0x7FFFFFFF  # sequences wrap past Int32 max to 0, as Kafka's
_ACKS_ALL = -1
_TOO_LARGE = (Errors.MessageSizeTooLargeError, Errors.RecordListTooLargeError)
_TopicData = ProduceRequest.TopicProduceData
_PartitionData = _TopicData.PartitionProduceData


class ProduceError(StreamrecError, RuntimeError):
    """Records could not be produced, or it is not known whether they were."""


class KeyPartitioner:
    """Each key's partition, as kafka-python's and Java's default partitioners place it
    (murmur2 of the key over the sorted partitions), each key hashed once."""

    _MAX_KEYS = 1 << 20  # keys (users) recur; this bounds the memory

    def __init__(self, partitions: Sequence[int]) -> None:
        self._partitions = sorted(partitions)
        self._cache: dict[bytes, int] = {}

    def __call__(self, keys: Sequence[bytes | None], no_key: int) -> list[int]:
        """The partitions of ``keys``; ``no_key`` for a None key."""
        partitions = self._partitions
        cache = self._cache
        if len(cache) >= self._MAX_KEYS:
            cache.clear()
        out = []
        for key in keys:
            if key is None:
                out.append(no_key)
                continue
            partition = cache.get(key)
            if partition is None:
                partition = cache[key] = partitions[(murmur2(key) & 0x7FFFFFFF)
                                                    % len(partitions)]
            out.append(partition)
        return out


@dataclass
class _Batch:
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes in the batch, header included
    started: float = 0.0  # monotonic time of the first record
    encoded: bytes | None = None  # once sent: retries send the same bytes and sequence
    sealed: float = 0.0  # monotonic time it was closed to new records: the delivery clock
    attempts: int = 0


class BatchProducer:
    """Produces records to ``topic`` with acks=all, in order per partition, each once.

    Keyed records go where kafka-python's default partitioner puts them;
    those without a key stick to one partition per batch, in turn. Retriable
    errors are retried (de-duplicated by the broker where it grants a
    producer id) until ``delivery_timeout_s`` after a batch was sealed; a
    batch too large is split, a record too large alone counted in
    ``refused``; anything else fails the producer for good (every later call
    raises :class:`ProduceError`). ``acked`` counts the records the broker
    acknowledged. Not thread-safe. How it works: docs/design.md.

    Args:
        bootstrap_servers: ``host:port`` of brokers to start from.
        topic: the topic, which must exist (or be created on first use by the broker).
        batch_bytes: a partition's batch is sealed and sent at this size
            (a single larger record makes a batch of its own).
        linger_s: ... or once its first record is this old, at the next :meth:`poll`.
        client: kafka-python's ``KafkaNetClient`` (default: one for
            ``bootstrap_servers``), or a stand-in with its methods (tests).
    """

    def __init__(self, bootstrap_servers: Sequence[str], topic: str, *,
                 batch_bytes: int = 1 << 20, linger_s: float = 0.05,
                 request_timeout_ms: int = 30_000, delivery_timeout_s: float = 120.0,
                 retry_backoff_s: float = 0.1, client_id: str = "streamrec-producer",
                 client: Any = None, security: Mapping[str, Any] | None = None) -> None:
        for name, value in (("batch_bytes", batch_bytes), ("request_timeout_ms",
                            request_timeout_ms), ("delivery_timeout_s", delivery_timeout_s)):
            if value <= 0:
                raise ValueError(f"{name}={value}: must be > 0")
        if linger_s < 0 or retry_backoff_s < 0:
            raise ValueError(f"linger_s={linger_s}, retry_backoff_s={retry_backoff_s}: "
                             "must be >= 0")
        self.topic = topic
        self.acked = 0
        self.refused = 0  # records the broker refused, each alone too large
        self._batch_bytes = batch_bytes
        self._linger_s = linger_s
        self._timeout_ms = request_timeout_ms
        self._delivery_timeout_s = delivery_timeout_s
        self._backoff_s = retry_backoff_s
        self._client = client if client is not None else KafkaNetClient(
            bootstrap_servers=list(bootstrap_servers), client_id=client_id,
            request_timeout_ms=request_timeout_ms, **(security or {}))
        try:
            self._client.check_version(timeout_ms=request_timeout_ms)  # raises if none answers
            self._partitions = self._wait_for_partitions()
            self._producer_id, self._epoch = self._init_producer_id()
        except BaseException:
            self._client.close()
            raise
        self._open: dict[int, _Batch] = {}  # the batch each partition is filling
        self._ready: dict[int, deque[_Batch]] = {p: deque() for p in self._partitions}
        self._in_flight: set[int] = set()  # partitions with a batch sent, not answered
        self._busy_nodes: set[int | str] = set()
        self._sequence = dict.fromkeys(self._partitions, 0)
        self._retry_at = dict.fromkeys(self._partitions, 0.0)
        self._keyed = KeyPartitioner(self._partitions)
        self._sticky = 0  # index into _partitions for records without a key
        self._error: ProduceError | None = None

    @property
    def idempotent(self) -> bool:
        """Whether retries are de-duplicated by the broker (it granted a producer id)."""
        return self._producer_id != NO_PRODUCER_ID

    def send(self, keys: Sequence[bytes | None], values: Sequence[bytes]) -> None:
        """Queue records (``keys[i]`` with ``values[i]``), then send what is ready.

        Raises:
            ProduceError: an earlier batch failed for good.
            ValueError: keys and values of different lengths.
        """
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        self._raise_failure()
        now = time.monotonic()
        if len(self._partitions) == 1:
            self._append(self._partitions[0], keys, values, now)
        else:
            groups: dict[int, tuple[list[bytes | None], list[bytes]]] = {}
            sticky = self._partitions[self._sticky]
            for key, value, partition in zip(keys, values, self._keyed(keys, sticky)):
                group = groups.get(partition)
                if group is None:
                    group = groups[partition] = ([], [])
                group[0].append(key)
                group[1].append(value)
            for partition, (group_keys, group_values) in groups.items():
                self._append(partition, group_keys, group_values, now)
        self.poll()

    def _append(self, partition: int, keys: Sequence[bytes | None], values: Sequence[bytes],
                now: float) -> None:
        """Add records to ``partition``'s open batch, sealing each that reaches batch_bytes."""
        ends = list(accumulate(len(v) + (len(k) if k else 0) + RECORD_OVERHEAD
                               for k, v in zip(keys, values)))
        start, used = 0, 0  # records taken, and their bytes
        while start < len(values):
            batch = self._open.get(partition)
            if batch is None:
                batch = self._open[partition] = _Batch(size=BATCH_OVERHEAD, started=now)
            # The records that fit (at least one, in an empty batch).
            stop = bisect_right(ends, used + self._batch_bytes - batch.size, lo=start)
            if stop == start and not batch.values:
                stop = start + 1
            batch.keys.extend(keys[start:stop])
            batch.values.extend(values[start:stop])
            if stop > start:
                batch.size += ends[stop - 1] - used
                used = ends[stop - 1]
            if stop < len(values):
                self._seal(partition)
            start = stop

    def poll(self, timeout_s: float = 0.0) -> None:
        """Seal batches past their linger, send what can go, read answers (up to ``timeout_s``)."""
        now = time.monotonic()
        for partition in [p for p, b in self._open.items() if now - b.started >= self._linger_s]:
            self._seal(partition)
        self._dispatch(now)
        self._client.poll(timeout_ms=timeout_s * 1000)
        self._dispatch(time.monotonic())
        self._raise_failure()

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued and wait for the broker's answers.

        Raises:
            ProduceError: a batch failed for good, or ``timeout_s`` passed first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for partition in list(self._open):
            self._seal(partition)
        while self._in_flight or any(self._ready.values()):
            if deadline is not None and time.monotonic() > deadline:
                raise ProduceError(f"{self.topic}: {self.pending()} records not acknowledged "
                                   f"within {timeout_s} s")
            self.poll(self._backoff_s)

    def pending(self) -> int:
        """Records queued or in flight, not yet acknowledged."""
        return (sum(len(b.values) for q in self._ready.values() for b in q)
                + sum(len(b.values) for b in self._open.values()))

    def close(self) -> None:
        """Close the connections; records not flushed are dropped."""
        self._client.close()

    def __enter__(self) -> BatchProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --

    def _wait_for_partitions(self) -> list[int]:
        future = self._client.cluster.add_topic(self.topic)
        deadline = time.monotonic() + self._timeout_ms / 1000
        while True:
            self._client.poll(timeout_ms=100, future=future)
            partitions = self._client.cluster.partitions_for_topic(self.topic)
            if partitions:
                return sorted(partitions)
            if time.monotonic() > deadline:
                raise ProduceError(f"topic {self.topic!r}: no partitions known after "
                                   f"{self._timeout_ms} ms (does it exist?)")
            if future.is_done:
                future = self._client.cluster.request_update()

    def _init_producer_id(self) -> tuple[int, int]:
        """A producer id and epoch from the broker, or none where it has no idempotence."""
        try:
            self._client.api_version(InitProducerIdRequest, max_version=1 << 15)
        except Errors.IncompatibleBrokerVersion:
            log.warning("the broker does not support idempotent produce: a batch retried "
                        "after a lost answer may be written twice")
            return NO_PRODUCER_ID, -1
        node = self._client.least_loaded_node(bootstrap_fallback=True)
        response = self._client.send_and_receive(node, InitProducerIdRequest(
            transactional_id=None, transaction_timeout_ms=self._timeout_ms,
            producer_id=NO_PRODUCER_ID, producer_epoch=-1), timeout_ms=self._timeout_ms)
        if response.error_code:
            error = Errors.for_code(response.error_code)
            raise ProduceError(f"the broker refused a producer id: {error.__name__}")
        return response.producer_id, response.producer_epoch

    def _seal(self, partition: int) -> None:
        batch = self._open.pop(partition)
        batch.sealed = time.monotonic()
        self._ready[partition].append(batch)
        if partition == self._partitions[self._sticky]:
            self._sticky = (self._sticky + 1) % len(self._partitions)

    def _dispatch(self, now: float) -> None:
        """Send each idle partition's next batch, one request per leader."""
        by_node: dict[int | str, list[tuple[int, _Batch]]] = {}
        if self._error is not None:
            return
        for partition, queue in self._ready.items():
            if not queue or partition in self._in_flight or self._retry_at[partition] > now:
                continue
            if queue[0].encoded is None and now - queue[0].sealed > self._delivery_timeout_s:
                # Never sent (no leader known): a batch sent times out on its answer.
                self._fail(partition, queue[0], Errors.LeaderNotAvailableError(
                    "no leader known"), now - queue[0].sealed)
                return
            leader = self._client.cluster.leader_for_partition(
                TopicPartition(self.topic, partition))
            if leader is None or leader == -1:
                self._client.cluster.request_update()
                continue
            if leader in self._busy_nodes or not self._client.ready(leader):
                continue
            by_node.setdefault(leader, []).append((partition, queue[0]))
        for node, batches in by_node.items():
            data = []
            for partition, batch in batches:
                if batch.encoded is None:
                    batch.encoded = encode_batch(
                        batch.keys, batch.values, int(time.time() * 1000), self._producer_id,
                        self._epoch, self._sequence[partition] if self.idempotent else -1)
                batch.attempts += 1
                data.append(_PartitionData(index=partition, records=batch.encoded))
                self._in_flight.add(partition)
            self._busy_nodes.add(node)
            request = ProduceRequest(transactional_id=None, acks=_ACKS_ALL,
                                     timeout_ms=self._timeout_ms,
                                     topic_data=[_TopicData(name=self.topic, partition_data=data)])
            parts = [p for p, _ in batches]
            (self._client.send(node, request)
             .add_callback(self._answered, node, parts)
             .add_errback(self._not_answered, node, parts))

    def _answered(self, node: int | str, partitions: list[int], response: Any) -> None:
        self._busy_nodes.discard(node)
        codes = {pr.index: pr.error_code for topic in response.responses
                 for pr in topic.partition_responses}
        for partition in partitions:
            code = codes.get(partition)
            error = (Errors.KafkaProtocolError(f"no answer for partition {partition}")
                     if code is None else None if code == 0 else Errors.for_code(code)())
            self._done(partition, error)

    def _not_answered(self, node: int | str, partitions: list[int], error: Exception) -> None:
        self._busy_nodes.discard(node)
        for partition in partitions:
            self._done(partition, error)

    def _done(self, partition: int, error: Exception | None) -> None:
        self._in_flight.discard(partition)
        queue = self._ready[partition]
        batch = queue[0]
        # DUPLICATE_SEQUENCE_NUMBER: an earlier attempt was written; that is success.
        if error is None or (self.idempotent and isinstance(
                error, Errors.DuplicateSequenceNumberError)):
            queue.popleft()
            self.acked += len(batch.values)
            self._sequence[partition] = (self._sequence[partition]
                                         + len(batch.values)) & _SEQUENCE_MASK
            return
        if isinstance(error, _TOO_LARGE):
            queue.popleft()
            if len(batch.values) > 1:  # halves, sent (and split) in turn
                half = len(batch.values) // 2
                queue.extendleft([_Batch(batch.keys[half:], batch.values[half:],
                                         sealed=batch.sealed),
                                  _Batch(batch.keys[:half], batch.values[:half],
                                         sealed=batch.sealed)])
            else:  # that record's problem: the rest goes on
                if not self.refused:
                    log.warning("%s/%d: a record of %d bytes was refused: %s (further "
                                "ones are counted)", self.topic, partition,
                                len(batch.values[0]), type(error).__name__)
                self.refused += 1
            return
        waited = time.monotonic() - batch.sealed
        if getattr(error, "retriable", False) and waited < self._delivery_timeout_s:
            log.warning("%s/%d: %s; retrying a batch of %d records (attempt %d)", self.topic,
                        partition, type(error).__name__, len(batch.values), batch.attempts + 1)
            if getattr(error, "invalid_metadata", False):
                self._client.cluster.request_update()
            self._retry_at[partition] = time.monotonic() + self._backoff_s
            return
        self._fail(partition, batch, error, waited)

    def _fail(self, partition: int, batch: _Batch, error: Exception, waited: float) -> None:
        """Fail for good: every later call raises, naming the first failure."""
        if self._error is None:
            reason = (f"still failing after {waited:.0f} s" if getattr(error, "retriable", False)
                      else "not retriable")
            self._error = ProduceError(
                f"{self.topic}/{partition}: a batch of {len(batch.values)} records failed "
                f"({_describe(error)}; {reason}); {self.acked} records were acknowledged "
                "before")

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


def _describe(error: Exception) -> str:
    """The error's name and message, the name once (kafka-python's errors repeat it)."""
    text = str(error)
    name = type(error).__name__
    return text if name in text else f"{name}: {text}" if text else name

"""The source seam: what every event source (Kafka, file, memory) returns.

Sources return good events and bad records separately (bad records are
data, not exceptions) together with the offsets that cover them, so the
training loop can checkpoint exactly what it has learned from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from streamrec.ingest.decode import decoder_for
from streamrec.ingest.event import Event
from streamrec.errors import DecodeError

if TYPE_CHECKING:
    from streamrec.ingest.metrics import IngestMetrics

__all__ = ["DeadLetter", "SourceBatch", "EventSource", "ForwardingSource", "MemorySource",
           "decode_records", "decode_values"]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be used: its raw bytes, why, and where it came from."""

    raw: bytes
    kind: str  # a DecodeError kind: malformed, missing_field, wrong_type, ...
    reason: str
    origin: str  # "topic/partition@offset" or "path:line"


@dataclass
class SourceBatch:
    """One poll's worth: decoded events, rejected records, and offsets after them.

    ``offsets`` maps ``(topic, partition)`` to the next offset to read
    (Kafka's commit convention) for everything returned so far.
    """

    events: list[Event]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # Per event, the partition it came from (the joiner keeps event time per
    # partition); None when the source is one ordered stream.
    origins: list[tuple[str, int]] | None = None
    # The partitions the source is assigned as of this poll, delivering or
    # not (the joiner waits for those it has not heard from); None when the
    # source is not partitioned.
    assigned: list[tuple[str, int]] | None = None
    # Per partition delivering in this poll: the offset of its first record and how
    # many records it delivered (the learned-offsets ledger), when the source has
    # offsets of its own.
    spans: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    # The log each topic's offsets belong to (Kafka: topic -> topic id), for the
    # checkpoint; None when the source's offsets need no such name.
    logs: dict[str, str] | None = None


class EventSource(Protocol):
    @property
    def exhausted(self) -> bool:
        """True once a finite source has returned everything (Kafka: never)."""

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch: ...

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None: ...

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        """Resume from a checkpoint's offsets (they win over committed ones).

        ``logs`` are the ``SourceBatch.logs`` the checkpoint recorded with them
        (a source whose offsets need no log name ignores them).
        """

    def close(self) -> None: ...


class ForwardingSource:
    """An :class:`EventSource` that hands every call to ``source``; a wrapper
    subclasses it and overrides what it changes."""

    def __init__(self, source: EventSource) -> None:
        self.source = source

    @property
    def exhausted(self) -> bool:
        return self.source.exhausted

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        return self.source.poll(max_events, timeout_s)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.source.commit(offsets)

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        self.source.seek(offsets, logs)

    def close(self) -> None:
        self.source.close()


def decode_records(records: Iterable[tuple[bytes, str]], value_format: str,
                   metrics: IngestMetrics | None = None, source: str = "memory",
                   decode: Callable[[bytes], Event] | None = None
                   ) -> tuple[list[Event], list[DeadLetter]]:
    """Decode ``(raw, origin)`` records into events, and dead letters for the rest.

    As :func:`decode_values`, with each record's origin given beside it.
    """
    pairs = list(records)
    origins = [origin for _, origin in pairs]
    return decode_values([raw for raw, _ in pairs], origins.__getitem__, value_format,
                         metrics, source, decode)


def decode_values(values: Sequence[bytes], origin: Callable[[int], str], value_format: str,
                  metrics: IngestMetrics | None = None, source: str = "memory",
                  decode: Callable[[bytes], Event] | None = None
                  ) -> tuple[list[Event], list[DeadLetter]]:
    """Decode raw ``values`` into events, and dead letters for the rest.

    ``origin(i)`` names where ``values[i]`` came from ("topic/partition@offset",
    "path:line"); it is called only for dead letters, so a source need not
    format one per record. ``decode`` replaces the ``value_format`` decoder
    (CSV rows); it must raise only :class:`~streamrec.errors.DecodeError`.
    Counts records, bytes and dead letters by kind on ``metrics`` under the
    ``source`` label.

    Raises:
        ValueError: an unknown ``value_format`` (before any value is read).
    """
    decoder = decode if decode is not None else decoder_for(value_format)
    events: list[Event] = []
    dead: list[DeadLetter] = []
    append = events.append
    for i, raw in enumerate(values):
        try:
            append(decoder(raw))
        except DecodeError as e:
            dead.append(DeadLetter(raw=raw, kind=e.kind, reason=str(e), origin=origin(i)))
    if metrics is not None:
        metrics.records.labels(source).inc(len(values))
        metrics.bytes.labels(source).inc(sum(map(len, values)))
        for letter in dead:
            metrics.dead_letters.labels(letter.kind).inc()
    return events, dead


class MemorySource:
    """A finite in-memory source of raw records (bytes/str, decoded) or ready Events."""

    def __init__(self, records: Iterable[bytes | str | Event], value_format: str = "auto",
                 metrics: IngestMetrics | None = None) -> None:
        self._records = list(records)
        self._format = value_format
        self._metrics = metrics
        self._next = 0
        self.committed: dict[tuple[str, int], int] = {}

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._records)

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        chunk = self._records[self._next:self._next + max_events]
        events: list[Event] = []
        dead: list[DeadLetter] = []
        for i, record in enumerate(chunk, start=self._next):
            if isinstance(record, Event):
                events.append(record)
                continue
            # (surrogatepass: text holding a lone surrogate becomes bytes the
            # decoder refuses as malformed, instead of an error losing the poll)
            raw = record.encode("utf-8", "surrogatepass") if isinstance(record, str) else record
            good, bad = decode_records([(raw, f"memory:{i}")], self._format, self._metrics)
            events.extend(good)
            dead.extend(bad)
        self._next += len(chunk)
        return SourceBatch(events=events, dead_letters=dead,
                           offsets={("memory", 0): self._next})

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        self._next = offsets.get(("memory", 0), self._next)

    def close(self) -> None:
        pass

"""The source seam: what every event source (Kafka, file, memory) returns.

Sources return good events and bad records separately (bad records are
data, not exceptions) together with the offsets that cover them, so the
training loop can checkpoint exactly what it has learned from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ingest.event import Event

__all__ = ["DeadLetter", "SourceBatch", "EventSource"]


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


class EventSource(Protocol):
    @property
    def exhausted(self) -> bool:
        """True once a finite source has returned everything (Kafka: never)."""

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch: ...

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None: ...

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Resume from a checkpoint's offsets (they win over committed ones)."""

    def close(self) -> None: ...

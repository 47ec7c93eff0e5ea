"""An EventSource over any iterator of events, optionally paced to a rate.

The demo feeds the synthetic stream through it, so the in-process loop runs
the same TrainingLoop code as Kafka does.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping

from streamrec.ingest.event import Event
from streamrec.ingest.source import SourceBatch
from streamrec.errors import StreamrecError

__all__ = ["IteratorSource"]


class IteratorSource:
    """Yields events from ``events`` at most ``rate`` per second (None = as fast as asked)."""

    def __init__(self, events: Iterable[Event], rate: float | None = None,
                 name: str = "iterator") -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate={rate!r}: must be > 0 events per second")
        self._it: Iterator[Event] = iter(events)
        self._rate = rate
        self._key = (f"iterator:{name}", 0)
        self._emitted = 0
        self._started: float | None = None
        self._exhausted = False

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        want = max_events
        if self._rate is not None:
            allowed = int((now - self._started) * self._rate) - self._emitted
            if allowed <= 0:
                # Sleep until the next event is due, within the poll timeout.
                due = self._started + (self._emitted + 1) / self._rate
                time.sleep(max(0.0, min(timeout_s, due - now)))
                allowed = int((time.monotonic() - self._started) * self._rate) - self._emitted
            want = max(0, min(want, allowed))
        events = list(itertools.islice(self._it, want))
        if len(events) < want:
            self._exhausted = True
        self._emitted += len(events)
        return SourceBatch(events=events, dead_letters=[], offsets={self._key: self._emitted})

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Nothing to commit: an iterator cannot be replayed."""

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        """Skip ahead to a checkpoint's offset (an iterator cannot go back)."""
        target = offsets.get(self._key, self._emitted)
        if target < self._emitted:
            raise StreamrecError(f"cannot seek {self._key[0]} back to {target}: "
                                 f"{self._emitted} events were already read")
        skipped = sum(1 for _ in itertools.islice(self._it, target - self._emitted))
        self._emitted += skipped

    def close(self) -> None:
        self._exhausted = True

"""PrefetchingSource: a source read ahead on a thread returns what the source returns."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest

from streamrec.ingest.event import Event
from streamrec.ingest.prefetch import PrefetchingSource
from streamrec.ingest.source import MemorySource, SourceBatch


def _events(n: int) -> list[Event]:
    return [Event(event_id=f"e{i}", type="example", user_id=f"u{i}", item_id="i",
                  timestamp_ms=i, label=0) for i in range(n)]


def _drain(source: PrefetchingSource, max_events: int) -> list[SourceBatch]:
    batches = []
    while not source.exhausted:
        got = source.poll(max_events, timeout_s=5.0)
        if got.events or got.offsets:
            batches.append(got)
    return batches


def test_every_event_comes_once_in_order_with_the_offsets_after_it() -> None:
    events = _events(1000)
    source = PrefetchingSource(MemorySource(events))
    try:
        batches = _drain(source, 64)
    finally:
        source.close()
    assert [e.event_id for b in batches for e in b.events] == [e.event_id for e in events]
    seen = 0
    for batch in batches:
        seen += len(batch.events)
        assert batch.offsets == {("memory", 0): seen}  # covers exactly what came so far


def test_a_seek_drops_what_was_read_ahead_and_resumes_there() -> None:
    events = _events(500)
    source = PrefetchingSource(MemorySource(events), depth=4)
    try:
        first = source.poll(50, timeout_s=5.0)
        assert [e.event_id for e in first.events] == [f"e{i}" for i in range(50)]
        source.seek({("memory", 0): 10})  # (the thread has read ahead by now)
        rest = _drain(source, 50)
    finally:
        source.close()
    assert [e.event_id for b in rest for e in b.events] == [f"e{i}" for i in range(10, 500)]


def test_commits_reach_the_source() -> None:
    inner = MemorySource(_events(10))
    source = PrefetchingSource(inner)
    source.poll(10, timeout_s=5.0)
    source.commit({("memory", 0): 10})
    source.close()
    assert inner.committed == {("memory", 0): 10}


class _Failing(MemorySource):
    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        raise ConnectionError("broker gone")


def test_an_error_of_the_source_is_raised_by_the_next_poll() -> None:
    source = PrefetchingSource(_Failing(_events(3)))
    with pytest.raises(ConnectionError, match="broker gone"):
        source.poll(10, timeout_s=5.0)
    source.close()


class _Recording(MemorySource):
    """Fails the test if two threads are ever inside the source at once."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__(events)
        self._inside = threading.Lock()

    def _enter(self) -> None:
        assert self._inside.acquire(blocking=False), "the source was called concurrently"

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        self._enter()
        try:
            return super().poll(max_events, timeout_s)
        finally:
            self._inside.release()

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._enter()
        try:
            super().commit(offsets)
        finally:
            self._inside.release()


def test_the_source_is_never_called_from_two_threads_at_once() -> None:
    source = PrefetchingSource(_Recording(_events(3000)))
    try:
        while not source.exhausted:
            got = source.poll(7, timeout_s=5.0)
            for key, offset in got.offsets.items():
                source.commit({key: offset})
    finally:
        source.close()


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        PrefetchingSource(MemorySource([]), depth=0)

"""PrefetchingSource: an event source polled on a thread of its own, a few polls ahead.

A trainer rank waits in its collectives for the other ranks (docs/ranks.md);
with the source's polls and decoding on their own thread, that wait goes into
reading ahead instead. The wrapped source is only ever called under one lock,
so a source that is not thread-safe (KafkaSource) stays safe.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping

from streamrec.ingest.source import EventSource, ForwardingSource, SourceBatch

__all__ = ["PrefetchingSource"]

# How long the thread's poll of the wrapped source may block: a commit or seek
# from the loop's thread waits for the poll under way at most this long.
_POLL_S = 0.05


class PrefetchingSource(ForwardingSource):
    """``source`` polled on a thread, up to ``depth`` polls ahead of :meth:`poll`.

    :meth:`poll` returns the oldest batch read ahead (waiting up to its
    ``timeout_s`` for one); each poll of the wrapped source asks for the
    ``max_events`` of the latest call, so a batch may hold more events than
    the call that returns it asked for. Offsets are the batches' own, so a
    checkpoint covers exactly the batches the loop took: what is read ahead
    and not taken is read again after a restart. :meth:`seek` drops what was
    read ahead. An error of the wrapped source's poll is raised by the next
    :meth:`poll`. Not for a consumer group that rebalances: a batch read ahead
    may hold records of a partition the group has moved elsewhere since.
    """

    def __init__(self, source: EventSource, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        super().__init__(source)
        # Batches read ahead (or the error that stopped the thread), each with
        # the seek epoch it was read in: a seek makes older ones stale.
        self._ready: queue.Queue[tuple[int, SourceBatch | Exception]] = queue.Queue(depth)
        self._lock = threading.Lock()  # held for every call of the wrapped source
        self._closed = threading.Event()
        self._max_events = 1
        self._epoch = 0
        self._assigned: list[tuple[str, int]] | None = None
        self._thread: threading.Thread | None = None
        # Batches polled and not taken yet (the thread counts one before it
        # notes the source exhausted), and whether the source said so.
        self._unread = 0
        self._count = threading.Lock()
        self._source_exhausted = False

    @property
    def exhausted(self) -> bool:
        return self._source_exhausted and self._unread == 0

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        self._max_events = max(1, max_events)
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_ahead, name="prefetch",
                                            daemon=True)
            self._thread.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                epoch, got = self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return SourceBatch(events=[], assigned=self._assigned)
            with self._count:
                self._unread -= 1
            if epoch != self._epoch:
                continue  # read before the last seek
            if isinstance(got, Exception):
                raise got
            self._assigned = got.assigned
            return got

    def _read_ahead(self) -> None:
        while not self._closed.is_set():
            if self._source_exhausted:  # (until a seek moves the source back)
                self._closed.wait(_POLL_S)
                continue
            with self._lock:
                epoch = self._epoch
                try:
                    got: SourceBatch | Exception = self.source.poll(self._max_events, _POLL_S)
                except Exception as e:  # raised on the loop's thread by its next poll
                    got = e
                with self._count:
                    self._unread += 1
                self._source_exhausted = self.source.exhausted
            while not self._closed.is_set():
                try:
                    self._ready.put((epoch, got), timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(got, Exception):
                return

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        with self._lock:
            self.source.commit(offsets)

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._epoch += 1
            self.source.seek(offsets, logs)
            self._source_exhausted = self.source.exhausted
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None  # (stopped by an error): the next poll starts another

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.source.close()

"""Admission control for the public port: bounded concurrency, a bounded queue, deadlines.

A replica scores at most ``slots`` requests at once (scoring holds the
interpreter lock for most of a request, so more at once only stretch every
request's latency); up to ``queue`` more wait for a slot, first come first
served. A request is refused at once when the queue is full, or when at the
recent scoring time it could not be scored before its deadline: behind the
queue (RESOURCE_EXHAUSTED, so that a client retries another replica while its
deadline still allows) or even on an idle replica (DEADLINE_EXCEEDED).
One whose deadline comes too close while it waits, or whose caller cancels, is
never scored. Goodput then stays near capacity past it, instead of every
request queueing until its deadline (the collapse of an unbounded queue).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

import grpc

__all__ = ["Admission", "Shed"]


class _Context(Protocol):
    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...

    def add_callback(self, callback: object) -> bool: ...


class Shed(Exception):
    """A request refused before scoring; ``reason``: overload, deadline or cancelled."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


class Admission:
    """``with admission.slot(context):`` around scoring; raises :class:`Shed`."""

    # How often a waiting request looks at its caller (a cancelled RPC also
    # wakes it through its callback, so this only bounds the worst case).
    _POLL_S = 0.05

    def __init__(self, slots: int, queue: int) -> None:
        if slots < 1 or queue < 0:
            raise ValueError(f"slots={slots} must be >= 1 and queue={queue} >= 0")
        self.slots = slots
        self.queue = queue
        self.running = 0
        # Moving average of the seconds a request holds its slot.
        self.service_s = 0.0
        # The waiting requests in order of arrival, each woken alone when it
        # is first in line and a slot frees (waking every waiter at each
        # release costs a thread switch each, under the interpreter lock).
        self._waiting: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.contextmanager
    def slot(self, context: _Context) -> Iterator[None]:
        self._enter(context)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            held = time.perf_counter() - t0
            with self._lock:
                self.running -= 1
                self.service_s += (held - self.service_s) * (0.1 if self.service_s else 1.0)
                self._wake_first()

    def _wake_first(self) -> None:
        """Wake the first waiting request if a slot is free (the lock held)."""
        if self._waiting and self.running < self.slots:
            self._waiting[0].set()

    def _enter(self, context: _Context) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # expired in gRPC's own queue
            raise Shed("deadline", grpc.StatusCode.DEADLINE_EXCEEDED,
                       "the deadline passed before the request was read")
        with self._lock:
            service = self.service_s
            if self.running < self.slots and not self._waiting:
                if remaining is not None and remaining < service:
                    raise Shed("deadline", grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"{remaining * 1e3:.0f} ms to the deadline, and scoring takes "
                               f"~{service * 1e3:.0f} ms")
                self.running += 1
                return
            # Done when the requests ahead have left the slots, and its own turn.
            expected = (len(self._waiting) + 1) * service / self.slots + service
            if len(self._waiting) >= self.queue or (remaining is not None and expected > remaining):
                raise Shed("overload", grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"replica at capacity ({self.running} requests scoring, "
                           f"{len(self._waiting)} waiting, ~{expected * 1e3:.0f} ms to an "
                           f"answer): retry on another replica")
            ticket = threading.Event()
            self._waiting.append(ticket)
        context.add_callback(ticket.set)
        try:
            while True:
                with self._lock:
                    if self.running < self.slots and self._waiting[0] is ticket:
                        self._check_waiting(context)  # once more, right before it is scored
                        self.running += 1
                        return
                    ticket.clear()  # (a release from now on sets it again)
                self._check_waiting(context)
                remaining = context.time_remaining()
                # Awake again by the time it must be shed (a scoring time before its deadline).
                ticket.wait(self._POLL_S if remaining is None else
                            min(self._POLL_S, max(0.0, remaining - self.service_s)))
        finally:
            with self._lock:
                self._waiting.remove(ticket)
                self._wake_first()  # the next in line, if a slot is free

    def _check_waiting(self, context: _Context) -> None:
        """Shed a waiting request whose caller left or that can no longer be scored in time."""
        if not context.is_active():
            raise Shed("cancelled", grpc.StatusCode.CANCELLED,
                       "the caller cancelled the request while it waited")
        remaining = context.time_remaining()
        if remaining is not None and (remaining <= 0 or remaining < self.service_s):
            raise Shed("deadline", grpc.StatusCode.DEADLINE_EXCEEDED,
                       "the deadline passed, or came closer than a scoring time, while the "
                       "request waited for a slot")

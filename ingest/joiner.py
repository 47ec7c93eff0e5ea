"""The joiner: labels impressions with the actions that follow them (Monolith §2.2).

An impression waits, keyed by ``(request_id, item_id)``, for an action of a
configured type (click, like, ...). The first such action within
``window_s`` of event time emits the impression as a positive example at
once; an impression still unmatched when the event-time watermark (the
newest timestamp seen) passes its timestamp + window is emitted as a
negative. Negatives may be down-sampled: each is kept with probability
``rate``, decided by a hash of (seed, request_id, user_id, item_id) so a
replay makes the same choices, and kept ones carry ``sample_rate = rate`` so the trainer
weighs them 1/rate in the loss (predictions stay calibrated to the full stream).

Labeled ``example`` events pass straight through. Actions with no pending
impression, and event types that are neither, are counted and dropped.
Impressions without a ``request_id`` are keyed by ``(user_id, item_id)``; a
repeated impression of a pending key is counted and dropped.

Expiry follows arrival order: impressions leave from the front of the queue,
so one that arrives late (older than impressions already pending) waits until
those before it expire. At most ``max_pending`` impressions wait; beyond that
the oldest is emitted early as a negative (counted as ``overflow``), which
bounds memory when actions stop arriving or timestamps jump.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from ingest.decode import event_from_dict, event_to_dict
from ingest.event import EXAMPLE, IMPRESSION, Event
from ingest.metrics import IngestMetrics

__all__ = ["Joiner"]

Key = tuple[str, int]


def _key(event: Event) -> Key:
    return (event.request_id or f"user:{event.user_id}", event.item_id)


class Joiner:
    """Turns impressions and actions into labeled examples; see the module docstring.

    ``push`` and ``flush`` return ``example`` events: positives carry
    ``label=1.0`` and ``sample_rate=1.0``, kept negatives ``label=0.0`` and
    ``sample_rate=rate``. Not thread-safe: one loop thread owns it.
    """

    def __init__(self, action_types: Iterable[str], window_s: float, rate: float = 1.0,
                 seed: int = 0, metrics: IngestMetrics | None = None,
                 max_pending: int = 1_000_000) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s={window_s}: must be > 0")
        if not 0 < rate <= 1:
            raise ValueError(f"rate={rate}: must be in (0, 1]")
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending}: must be >= 1")
        self.action_types = frozenset(action_types)
        self.window_ms = int(window_s * 1000)
        self.rate = rate
        self.seed = seed
        self.metrics = metrics
        self.max_pending = max_pending
        # Insertion order is event order, so expiry pops from the front.
        self._pending: OrderedDict[Key, Event] = OrderedDict()
        self._watermark = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels(reason).inc()

    def _keep(self, event: Event) -> bool:
        if self.rate >= 1.0:
            return True
        digest = hashlib.blake2b(f"{self.seed}|{event.request_id}|{event.user_id}|"
                                 f"{event.item_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.rate

    def _negative(self, impression: Event, out: list[Event]) -> None:
        if not self._keep(impression):
            self._count("negative_sampled")
            return
        out.append(dataclasses.replace(impression, type=EXAMPLE, label=0.0,
                                       sample_rate=self.rate))
        if self.metrics is not None:
            self.metrics.joined.labels("negative").inc()

    def push(self, events: Iterable[Event]) -> list[Event]:
        """Feed events in arrival order; returns the training examples ready now."""
        out: list[Event] = []
        for event in events:
            self._watermark = max(self._watermark, event.timestamp_ms)
            if event.type == EXAMPLE:
                out.append(event)
            elif event.type == IMPRESSION:
                key = _key(event)
                if key in self._pending:
                    self._count("duplicate_impression")
                    continue
                self._pending[key] = event
                if len(self._pending) > self.max_pending:
                    self._count("overflow")
                    self._negative(self._pending.popitem(last=False)[1], out)
            elif event.type in self.action_types:
                impression = self._pending.pop(_key(event), None)
                if impression is None or event.timestamp_ms - impression.timestamp_ms \
                        > self.window_ms:
                    self._count("orphan_action")
                    if impression is not None:
                        self._negative(impression, out)
                    continue
                out.append(dataclasses.replace(impression, type=EXAMPLE, label=1.0))
                if self.metrics is not None:
                    self.metrics.joined.labels("positive").inc()
            else:
                self._count("unknown_type")
        self._expire(out)
        if self.metrics is not None:
            self.metrics.pending.set(len(self._pending))
        return out

    def _expire(self, out: list[Event]) -> None:
        horizon = self._watermark - self.window_ms
        while self._pending:
            key, first = next(iter(self._pending.items()))
            if first.timestamp_ms >= horizon:
                break
            del self._pending[key]
            self._negative(first, out)

    def flush(self) -> list[Event]:
        """Emit every pending impression as a negative (end of a finite stream)."""
        out: list[Event] = []
        while self._pending:
            self._negative(self._pending.popitem(last=False)[1], out)
        if self.metrics is not None:
            self.metrics.pending.set(0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain containers only: checkpoints are loaded with ``weights_only=True``."""
        return {"watermark": self._watermark,
                "pending": [event_to_dict(e) for e in self._pending.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._watermark = int(state["watermark"])
        self._pending = OrderedDict()
        for data in state["pending"]:
            event = event_from_dict(data)
            self._pending[_key(event)] = event
        if self.metrics is not None:
            self.metrics.pending.set(len(self._pending))

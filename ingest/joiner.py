"""The joiner: labels impressions with the actions that follow them (Monolith §2.2).

Impressions wait, keyed by ``(request_id, item_id)``, for an action within
``window_s``; ``delayed_feedback`` chooses what leaves when (wait for the window,
or fake negatives at once). How it copes with duplicates, skewed clocks and
partitions read at different event times: docs/design.md, "The joiner".
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from streamrec.ingest.decode import event_from_dict, event_to_dict
from streamrec.ingest.event import EXAMPLE, IMPRESSION, Event
from streamrec.ingest.metrics import IngestMetrics
from streamrec.config import DelayedFeedback

__all__ = ["Joiner"]

Key = tuple[str, int]
# How much earlier than its impression an action may be stamped and still count.
_CLOCK_TOLERANCE_MS = 1_000
# Actions one key may have waiting for its impression.
_EARLY_PER_KEY = 4
# Pushes with events, on top of idle_s, before a partition that sent none is quiet.
_IDLE_PUSHES = 100
# An impression's event_id, else its (request key, item, timestamp).
Identity = str | tuple[str, int, int]


def _key(event: Event) -> Key:
    return (event.request_id or f"user:{event.user_id}", event.item_id)


def _identity(event: Event) -> Identity:
    """What makes two deliveries one impression: its event_id, else its key and time."""
    # (The event_id itself, not a tuple around it: several per impression.)
    return event.event_id or (event.request_id or f"user:{event.user_id}", event.item_id,
                              event.timestamp_ms)


def _scored_as(example: Event, impression: Event) -> Event:
    """``example`` (made of ``impression``) with the impression's served-time score."""
    return example._replace(predicted=impression.predicted,
                            served_history=impression.served_history)


class Joiner:
    """Turns impressions and actions into labeled examples; see the module docstring.

    ``push`` and ``flush`` return ``example`` events to train on: positives
    carry ``label=1.0`` and ``sample_rate=1.0``, kept negatives ``label=0.0``
    and ``sample_rate=rate``. ``take_outcomes`` returns every impression
    whose label became known since its last call (sampled-out negatives
    included). Not thread-safe: one loop thread owns it.
    """

    def __init__(self, action_types: Iterable[str], window_s: float, rate: float = 1.0,
                 seed: int = 0, metrics: IngestMetrics | None = None,
                 max_pending: int = 1_000_000, max_clock_skew_s: float = 0.0,
                 idle_s: float = 10.0,
                 delayed_feedback: DelayedFeedback | str = DelayedFeedback.WAIT,
                 elapsed_s: float = 0.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s={window_s}: must be > 0")
        if not 0 < rate <= 1:
            raise ValueError(f"rate={rate}: must be in (0, 1]")
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending}: must be >= 1")
        if not max_clock_skew_s >= 0:
            raise ValueError(f"max_clock_skew_s={max_clock_skew_s}: must be >= 0")
        if not idle_s > 0:
            raise ValueError(f"idle_s={idle_s}: must be > 0")
        if not 0 <= elapsed_s < window_s:
            raise ValueError(f"elapsed_s={elapsed_s}: must be in [0, window_s)")
        self.elapsed_ms = int(elapsed_s * 1000)
        self.delayed_feedback = DelayedFeedback(delayed_feedback)
        self.action_types = frozenset(action_types)
        self.window_ms = int(window_s * 1000)
        self.rate = rate
        self.seed = seed
        self.metrics = metrics
        # (Per settled impression: the labelled children, looked up once.)
        self._joined = None if metrics is None else (metrics.joined.labels("negative"),
                                                     metrics.joined.labels("positive"))
        self.max_pending = max_pending
        self.max_clock_skew_ms = int(max_clock_skew_s * 1000)
        # Insertion order is arrival order, so expiry pops from the front.
        # Each entry keeps the time it expires by (its timestamp, capped at
        # the clock bound when it arrived).
        self._pending: OrderedDict[Key, tuple[Event, int]] = OrderedDict()
        # Actions waiting for their impression: a few per key (a stale click of
        # an earlier showing must not crowd out this showing's), newest last.
        self._early: OrderedDict[Key, list[tuple[Event, int]]] = OrderedDict()
        self._early_count = 0  # actions in _early, at most max_pending
        self._resolved: OrderedDict[Identity, int] = OrderedDict()
        # "wait": labeled examples held until their window closes, by (time, arrival).
        self._held: list[list[Any]] = []  # [time, order, example]: a heap
        self._held_seq = 0
        # Labeled impressions, (timestamp, order, example), until every
        # label of their time is known (``take_outcomes``).
        self._outcomes: list[list[Any]] = []  # [time, order, example]: a heap
        self._outcome_seq = 0
        # Held examples and outcomes of impressions settled in the current push
        # before they were scored, by identity: ``annotate`` gives them the score.
        self._unscored: dict[Identity, list[list[Any]]] = {}
        self._flushed = False  # since the last push: every outcome is settled
        # "fake_negative": impressions not yet learned as a negative, in arrival
        # order, and those learned as one whose label is still unknown.
        self._unobserved: collections.deque[tuple[int, Identity, Event]] = collections.deque()
        self._observed: set[Identity] = set()
        self._positives = self._duplicated = 0  # clicks joined; of them after the negative
        self._watermark = 0
        self._cap = 0
        self.idle_s = idle_s
        # Per partition: the newest (capped) event time, and when (wall
        # clock, monotonic) it last delivered an event.
        self._clocks: dict[tuple[str, int] | None, int] = {}
        self._heard: dict[tuple[str, int] | None, tuple[float, int]] = {}  # (wall, push)
        self._pushes = 0

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

    def _settle(self, impression: Event, at: int, label: float, out: list[Event]) -> None:
        """The impression's label is known: report it, and train on it as the mode says."""
        labeled = impression._replace(type=EXAMPLE, label=label)
        entry = [impression.timestamp_ms, self._outcome_seq, labeled]
        heapq.heappush(self._outcomes, entry)
        self._outcome_seq += 1
        self._remember_unscored(entry)
        if self._joined is not None:
            self._joined[bool(label)].inc()
        if self.delayed_feedback is DelayedFeedback.FAKE_NEGATIVE:
            identity = _identity(impression)
            observed = identity in self._observed
            self._observed.discard(identity)
            if label:
                self._positives += 1
                self._duplicated += observed
                if observed:
                    out.append(labeled._replace(fake_negative=True, relearned=True))
                else:  # clicked before its time to be learned: learned then, as a positive
                    self._hold(at, labeled._replace(fake_negative=True), out)
            elif not observed:  # (labeled before its time to be learned: overflow, a re-showing)
                self._fake_negative(impression, out)
            return
        if not label:
            if not self._keep(impression):
                self._count("negative_sampled")
                return
            labeled = labeled._replace(sample_rate=self.rate)
        self._hold(at, labeled, out)

    def _hold(self, at: int, example: Event, out: list[Event]) -> None:
        entry = [at, self._held_seq, example]
        heapq.heappush(self._held, entry)
        self._held_seq += 1
        self._remember_unscored(entry)
        if len(self._held) > self.max_pending:  # the oldest leaves early
            if self.metrics is not None:
                self.metrics.overflow.inc()
            out.append(heapq.heappop(self._held)[2])

    def _remember_unscored(self, entry: list[Any]) -> None:
        if entry[2].predicted is None:
            self._unscored.setdefault(_identity(entry[2]), []).append(entry)

    def annotate(self, scored: Iterable[Event], released: Sequence[Event] = ()
                 ) -> list[Event]:
        """Give impressions of the last push their served-time scores.

        ``scored``: the impressions as pushed, with ``predicted`` (and
        ``served_history``) set. For a loop that scores the impressions it
        pushed after the push (so that a score can see the labels released
        before it in the same push): the impressions still waiting, and the
        examples and outcomes made of them during the push, carry the score
        from now on. Returns ``released`` (the examples the push returned)
        with the scores of the impressions they came from.
        """
        pending = self._pending
        by_identity: dict[Identity, Event] = {}
        for impression in scored:
            identity = _identity(impression)
            by_identity[identity] = impression
            key = _key(impression)
            entry = pending.get(key)
            if entry is not None and entry[0].predicted is None \
                    and _identity(entry[0]) == identity:
                pending[key] = (impression, entry[1])
            for made in self._unscored.pop(identity, ()):
                made[2] = _scored_as(made[2], impression)
        out = []
        for example in released:
            made_of = None if example.predicted is not None else \
                by_identity.get(_identity(example))
            out.append(example if made_of is None else _scored_as(example, made_of))
        return out

    def _fake_negative(self, impression: Event, out: list[Event]) -> None:
        """An impression's negative on arrival (``fake_negative``; sampled like a negative)."""
        if not self._keep(impression):
            self._count("negative_sampled")
            return
        out.append(impression._replace(type=EXAMPLE, label=0.0, sample_rate=self.rate,
                                       fake_negative=True))

    @property
    def duplicated_share(self) -> float:
        """The share of joined clicks whose impression was learned as a negative first.

        1.0 with ``elapsed_s = 0`` (every impression is); the weights of the
        fake-negative examples use it (``OnlineTrainer.train_batch``).
        """
        return (self._duplicated + 1) / (self._positives + 1)

    def take_outcomes(self, settled: bool = True) -> list[Event]:
        """Labeled impressions (as ``example`` events) not taken yet, in impression-time order.

        With ``settled``, only those stamped before every impression of their
        time has its final label (the watermark minus the window), so that
        figures taken from them are fair at any moment: a click is known
        seconds after its impression, a miss only when the window closes.
        Without, every label decided so far. ``flush`` settles them all.
        """
        horizon = self._watermark - self.window_ms
        settled = settled and not self._flushed
        outcomes, heap = [], self._outcomes
        while heap and (not settled or heap[0][0] < horizon):
            outcomes.append(heapq.heappop(heap)[2])
        return outcomes

    def _resolve(self, impression: Event, at: int) -> None:
        """Remember a joined or expired impression, so a redelivery is known."""
        # Kept two windows from when it was resolved (a late impression's own
        # time may already be that old: its retry would be trained again).
        self._resolved[_identity(impression)] = max(at, self._watermark)
        if len(self._resolved) > self.max_pending:
            self._resolved.popitem(last=False)

    def _within(self, delay_ms: int) -> bool:
        """Whether an action ``delay_ms`` after an impression is its outcome.

        An action stamped before the impression is another one's (a double or
        redelivered click on an earlier showing of the same key), except by
        up to ``_CLOCK_TOLERANCE_MS``: the two come from different services' clocks.
        """
        return -_CLOCK_TOLERANCE_MS <= delay_ms <= self.window_ms

    def _orphan(self) -> None:
        self._count("orphan_action")

    def push(self, events: Iterable[Event],
             origins: Sequence[tuple[str, int]] | None = None,
             assigned: Iterable[tuple[str, int]] | None = None,
             marks: list[int] | None = None) -> list[Event]:
        """Feed events in arrival order; returns the training examples ready now.

        ``origins[i]`` is the partition ``events[i]`` came from (None: one stream).
        ``assigned`` is every partition the source reads now (Kafka's
        assignment), delivering or not: one not heard from yet holds the
        watermark where it is, like a partition behind, until it delivers or
        ``idle_s`` passes; one no longer assigned stops holding it at once.
        ``marks``, when given, gets one entry per event: how many of the
        returned examples were ready once that event was taken in (those after
        the last mark left when the watermark moved, at the end).
        """
        if assigned:  # (empty before a group join and during a rebalance: not news)
            self._assign(set(assigned))
        self._flushed = False
        self._unscored.clear()
        out: list[Event] = []
        self._cap = max(self._cap, int(time.time() * 1000) + self.max_clock_skew_ms)
        cap = self._cap
        clocks = self._clocks
        for event, origin in zip(events, origins or itertools.repeat(None)):
            at = min(event.timestamp_ms, cap)
            if at > clocks.get(origin, -1):
                clocks[origin] = at
            if event.type == EXAMPLE:
                out.append(event)
            elif event.type == IMPRESSION:
                self._impression(event, at, out)
            elif event.type in self.action_types:
                self._action(event, at, out)
            else:
                self._count("unknown_type")
            if marks is not None:
                marks.append(len(out))
        self._advance(set(origins) if origins is not None else {None} if clocks else set())
        self._expire(out)
        if self.metrics is not None:
            self.metrics.pending.set(len(self._pending))
        return out

    def _impression(self, event: Event, at: int, out: list[Event]) -> None:
        key = _key(event)
        identity = _identity(event)
        earlier = self._pending.get(key)
        if identity in self._resolved or (earlier is not None
                                          and _identity(earlier[0]) == identity):
            self._count("duplicate_impression")
            return
        if earlier is not None:
            # Another showing of the key (no request_id: the same user and item)
            # while the first waits: one key holds one showing, the newest.
            if at < earlier[1]:  # (clock-capped: one stamped ahead is not "newest" for long)
                # An older showing read late (another partition, a retry): the
                # newer one keeps waiting; this one's actions, read before it,
                # went to the newer one or were orphans.
                self._arrive(event, at, out)
                self._settle(event, at, 0.0, out)
                self._resolve(event, at)
                return
            del self._pending[key]
            self._settle(earlier[0], earlier[1], 0.0, out)
            self._resolve(earlier[0], earlier[1])
        self._arrive(event, at, out)
        waiting = self._early.pop(key, None)
        if waiting is not None:
            matched, later = False, []
            for action in waiting:
                delay = action[0].timestamp_ms - event.timestamp_ms
                if not matched and self._within(delay):
                    matched = True  # this showing's action
                elif delay < -_CLOCK_TOLERANCE_MS:
                    self._orphan()  # an earlier showing's
                else:
                    later.append(action)  # after the window: a later showing's, maybe
            self._early_count -= len(waiting) - len(later)
            if later:
                self._early[key] = later
            if matched:
                self._settle(event, at, 1.0, out)
                self._resolve(event, at)
                return
        self._pending[key] = (event, at)
        if len(self._pending) > self.max_pending:
            if self.metrics is not None:
                self.metrics.overflow.inc()
            first, first_at = self._pending.popitem(last=False)[1]
            self._settle(first, first_at, 0.0, out)
            self._resolve(first, first_at)

    def _arrive(self, impression: Event, at: int, out: list[Event]) -> None:
        if self.delayed_feedback is not DelayedFeedback.FAKE_NEGATIVE:
            return
        if self.elapsed_ms:
            self._unobserved.append((at, _identity(impression), impression))
            return
        self._observed.add(_identity(impression))
        self._fake_negative(impression, out)

    def _observe(self, horizon: int, due: list[tuple[int, int, Event]]) -> None:
        """Learn as negatives the impressions ``elapsed_s`` old still waiting for a
        click: ``(arrival, order, negative)`` into ``due``."""
        waiting = self._unobserved
        while waiting and waiting[0][0] < horizon:
            at, identity, impression = waiting.popleft()
            entry = self._pending.get(_key(impression))
            if entry is not None and _identity(entry[0]) == identity:
                self._observed.add(identity)
                negatives: list[Event] = []
                self._fake_negative(entry[0], negatives)  # (scored since it arrived)
                due.extend((at, -1, negative) for negative in negatives)

    def _action(self, event: Event, at: int, out: list[Event]) -> None:
        key = _key(event)
        entry = self._pending.get(key)
        if entry is not None:
            impression, impression_at = entry
            delay = event.timestamp_ms - impression.timestamp_ms
            if delay < -_CLOCK_TOLERANCE_MS:
                self._orphan()  # another showing's action: this impression waits on
                return
            del self._pending[key]
            self._resolve(impression, impression_at)
            if delay <= self.window_ms:
                self._settle(impression, impression_at, 1.0, out)
                return
            # Too late for this impression (a negative), maybe a later showing's.
            self._settle(impression, impression_at, 0.0, out)
        self._wait(key, event, at)

    def _wait(self, key: Key, event: Event, at: int) -> None:
        """Keep an action until its impression arrives (another topic or partition)."""
        waiting = self._early.get(key)
        if waiting is None:
            self._early[key] = [(event, at)]
        else:
            waiting.append((event, at))
            self._early.move_to_end(key)
            if len(waiting) > _EARLY_PER_KEY:  # the oldest gives way (a burst, a retry)
                del waiting[0]
                self._orphan()
                return
        self._early_count += 1
        if self._early_count > self.max_pending:  # the oldest key's give way
            for _ in self._early.popitem(last=False)[1]:
                self._early_count -= 1
                self._orphan()

    def _advance(self, delivered: set[tuple[str, int] | None]) -> None:
        """Move the watermark to the slowest partition that has not gone quiet.

        Quiet: nothing from it for ``idle_s`` of wall time *and* for
        ``_IDLE_PUSHES`` pushes that brought events. Both: a pause of the loop
        (a checkpoint, a slow step) has no pushes, and a burst of pushes takes
        no time, and neither is a partition going quiet.
        """
        if not delivered:
            return
        self._pushes += 1
        now = time.monotonic()
        for origin in delivered:
            self._heard[origin] = (now, self._pushes)
        active = [clock for origin, clock in self._clocks.items() if self._active(origin, now)]
        if active:
            self._watermark = max(self._watermark, min(active))

    def _assign(self, assigned: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        for origin in assigned - self._clocks.keys():
            # Nothing read from it yet: its clock is below every event time,
            # so it holds the watermark (which never moves back) where it is,
            # for idle_s of wall time only (a first fetch comes within seconds;
            # an empty partition must not wait out 100 pushes of a slow stream).
            self._clocks[origin] = -1
            self._heard[origin] = (now, self._pushes - _IDLE_PUSHES - 1)
        for origin in [o for o in self._clocks if o is not None and o not in assigned]:
            del self._clocks[origin]
            self._heard.pop(origin, None)

    def _active(self, origin: tuple[str, int] | None, now: float | None = None) -> bool:
        """Whether ``origin`` has not gone quiet (see :meth:`_advance`)."""
        heard_at, heard_push = self._heard.get(origin, (0.0, -_IDLE_PUSHES - 1))
        now = time.monotonic() if now is None else now
        return now - heard_at <= self.idle_s or self._pushes - heard_push <= _IDLE_PUSHES

    def _expire(self, out: list[Event]) -> None:
        # Fake negatives and the clicks held until their impressions' time to be
        # learned come out together, in impression order: a learner that is
        # updated one outcome at a time (the wide terms) must not see a burst's
        # negatives first and its clicks after.
        due: list[tuple[int, int, Event]] = []
        if self._unobserved:
            self._observe(self._watermark - self.elapsed_ms, due)
        horizon = self._watermark - self.window_ms
        while self._pending:
            key, (first, at) = next(iter(self._pending.items()))
            if at >= horizon:
                break
            del self._pending[key]
            self._settle(first, at, 0.0, out)
            self._resolve(first, at)
        held = self._held
        release = horizon if self.delayed_feedback is DelayedFeedback.WAIT else \
            self._watermark - self.elapsed_ms
        while held and held[0][0] < release:
            at, order, example = heapq.heappop(held)
            due.append((at, order, example))
        if due:
            due.sort(key=lambda entry: entry[:2])
            out.extend(example for _, _, example in due)
        while self._early:
            key, waiting = next(iter(self._early.items()))
            live = [action for action in waiting if action[1] >= horizon]
            for _ in range(len(waiting) - len(live)):
                self._orphan()  # each waiting action expires by its own time
            self._early_count -= len(waiting) - len(live)
            if live:
                if len(live) < len(waiting):
                    self._early[key] = live
                break
            del self._early[key]
        # A redelivery comes soon after the original: two windows are plenty.
        while self._resolved:
            identity, at = next(iter(self._resolved.items()))
            if at >= horizon - self.window_ms:
                break
            del self._resolved[identity]

    def flush(self) -> list[Event]:
        """Label every pending impression negative and emit what is held (end of a finite stream).

        Every outcome is settled: ``take_outcomes`` returns them all.
        """
        self._flushed = True
        out: list[Event] = []
        while self._pending:
            first, at = self._pending.popitem(last=False)[1]
            self._settle(first, at, 0.0, out)
        while self._held:
            out.append(heapq.heappop(self._held)[2])
        self._unobserved.clear()
        for waiting in self._early.values():
            for _ in waiting:
                self._orphan()
        self._early.clear()
        self._early_count = 0
        if self.metrics is not None:
            self.metrics.pending.set(0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain containers only: checkpoints are loaded with ``weights_only=True``."""
        return {"watermark": self._watermark,
                "pending": [event_to_dict(e) for e, _ in self._pending.values()],
                # Served-time scores of the pending impressions (NaN: not scored).
                "predicted": [math.nan if e.predicted is None else e.predicted
                              for e, _ in self._pending.values()],
                # "fake_negative": which were learned as negatives already.
                "observed": [_identity(e) in self._observed for e, _ in self._pending.values()],
                "positives": [self._positives, self._duplicated],
                # Labeled examples waiting for their window ("wait"), with their
                # sample rates and served-time scores.
                "held": [[event_to_dict(e), at, e.sample_rate,
                          math.nan if e.predicted is None else e.predicted]
                         for at, _, e in sorted(self._held)],
                # Labeled impressions not yet reported, with their served-time scores.
                "outcomes": [[event_to_dict(e), math.nan if e.predicted is None else e.predicted]
                             for _, _, e in sorted(self._outcomes)],
                "early_actions": [event_to_dict(e) for waiting in self._early.values()
                                  for e, _ in waiting],
                # [event_id, request key, item, timestamp, resolved at]
                "resolved": [[identity, "", 0, 0, at] if isinstance(identity, str)
                             else ["", *identity, at] for identity, at in self._resolved.items()],
                # Per partition event time: after a restore, a partition not
                # heard from yet still holds the watermark (until it goes quiet).
                "clocks": [["" if o is None else o[0], -1 if o is None else o[1], clock]
                           for o, clock in self._clocks.items() if self._active(o)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._watermark = int(state["watermark"])
        cap = int(time.time() * 1000) + self.max_clock_skew_ms
        self._pending = OrderedDict()
        for data, score in zip(state["pending"], state["predicted"]):
            event = event_from_dict(data)
            if math.isfinite(score):
                event = event._replace(predicted=float(score))
            self._pending[_key(event)] = (event, min(event.timestamp_ms, cap))
        self._observed, self._unobserved = set(), collections.deque()
        for (event, at), seen in zip(self._pending.values(), state["observed"]):
            if seen:
                self._observed.add(_identity(event))
            elif self.delayed_feedback is DelayedFeedback.FAKE_NEGATIVE:
                self._unobserved.append((at, _identity(event), event))
        self._positives, self._duplicated = state["positives"]
        self._held, self._held_seq = [], 0
        for data, at, rate, score in state["held"]:
            example = event_from_dict(data)._replace(sample_rate=float(rate))
            if math.isfinite(score):
                example = example._replace(predicted=float(score))
            self._hold(int(at), example, [])
        self._outcomes, self._outcome_seq = [], 0
        for data, score in state["outcomes"]:
            labeled = event_from_dict(data)
            if math.isfinite(score):
                labeled = labeled._replace(predicted=float(score))
            heapq.heappush(self._outcomes, [labeled.timestamp_ms, self._outcome_seq, labeled])
            self._outcome_seq += 1
        self._early = OrderedDict()
        for data in state["early_actions"]:
            event = event_from_dict(data)
            self._early.setdefault(_key(event), []).append(
                (event, min(event.timestamp_ms, cap)))
        self._early_count = sum(len(waiting) for waiting in self._early.values())
        self._clocks, self._heard, self._pushes = {}, {}, 0
        now = time.monotonic()
        for topic, partition, clock in state["clocks"]:
            origin = None if partition == -1 else (str(topic), int(partition))
            self._clocks[origin] = int(clock)
            self._heard[origin] = (now, 0)
        self._resolved = OrderedDict()
        for event_id, request, item, stamp, at in state["resolved"]:
            identity = str(event_id) or (str(request), int(item), int(stamp))
            self._resolved[identity] = int(at)
        if self.metrics is not None:
            self.metrics.pending.set(len(self._pending))

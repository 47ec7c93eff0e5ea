"""Synthetic event streams whose ground truth is known.

Zipf popularity, new ids, drift, optional bursts and list features, delayed
clicks; labeled or in production form (impressions and clicks). The model of
the stream: docs/design.md, "Synthetic streams".
"""

from __future__ import annotations

import enum
import heapq
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streamrec.ingest.decode import encode_json
from streamrec.ingest.event import EXAMPLE, IMPRESSION, Event

__all__ = [
    "SyntheticConfig",
    "SyntheticStream",
    "PRESETS",
    "default",
    "drifting",
    "bursty_new_users",
    "popularity_churn",
    "dense_vs_sparse_users",
    "production",
    "StreamForm",
    "write_jsonl",
]


class StreamForm(str, enum.Enum):
    """How a stream is written: labeled examples, or impressions and clicks."""

    LABELED = "labeled"
    JOINED = "joined"


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 7
    user_slots: int = 2_000
    item_slots: int = 500
    user_zipf: float = 1.05
    item_zipf: float = 1.1
    dim: int = 8
    categories: int = 40
    countries: int = 12
    base_logit: float = -2.0
    interaction_scale: float = 1.0  # weight of <u, v> (latent vectors are unit-variance)
    user_bias_std: float = 0.5
    item_bias_std: float = 0.7
    context_std: float = 0.6  # country x category affinity
    price_effect: float = -0.25  # per unit of log price
    new_user_rate: float = 0.01
    new_item_rate: float = 0.002
    drift: float = 0.02  # random-walk step of an active user's preferences
    burst_rate: float = 0.0  # probability that an event starts a new user's burst
    burst_length: int = 30  # mean events per burst
    events_per_second: float = 200.0  # event-time density of the stream
    start_ms: int = 1_700_000_000_000
    tags: int = 0  # tag vocabulary of the list feature "tags" (0: no such feature)
    tag_std: float = 0.5  # country x tag affinity
    # Click delay behind its impression: log-normal, this median and sigma (of
    # the log); clicks later than join_window_s count as misses.
    click_delay_median_s: float = 3.0
    click_delay_sigma: float = 1.5
    join_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("user_slots", "item_slots", "dim", "categories", "countries",
                     "burst_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("new_user_rate", "new_item_rate", "burst_rate", "drift"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be in [0, 1)")
        for name in ("events_per_second", "click_delay_median_s", "join_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be > 0")
        for name in ("tags", "tag_std", "click_delay_sigma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be >= 0")


def default() -> SyntheticConfig:
    """Zipf popularity, a trickle of new ids, slow drift."""
    return SyntheticConfig()


def drifting() -> SyntheticConfig:
    """Preferences move fast: stale parameters cost AUC quickly."""
    return SyntheticConfig(drift=0.12)


def bursty_new_users() -> SyntheticConfig:
    """New users arrive in bursts of consecutive events (sessions)."""
    return SyntheticConfig(burst_rate=0.01, burst_length=40, user_bias_std=1.0)


def popularity_churn() -> SyntheticConfig:
    """Items come and go at every popularity rank."""
    return SyntheticConfig(new_item_rate=0.02, item_bias_std=1.0)


def dense_vs_sparse_users() -> SyntheticConfig:
    """A few heavy users and a long tail of users seen once or twice."""
    return SyntheticConfig(user_slots=50_000, user_zipf=1.4, new_user_rate=0.05)


def production() -> SyntheticConfig:
    """As production sends it: bursts of one user's events, a list feature (tags)."""
    return SyntheticConfig(burst_rate=0.01, burst_length=20, tags=30, tag_std=0.6)


PRESETS = {f.__name__: f for f in (default, drifting, bursty_new_users, popularity_churn,
                                   dense_vs_sparse_users, production)}


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 ``x``: a deterministic hash of each id."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _item_tags(item_ids: np.ndarray, tags: int) -> np.ndarray:
    """``[n, 3]`` tags of each item (a function of its id), -1 past its 1-3 tags."""
    base = _mix(item_ids.astype(np.uint64))
    count = 1 + (base % np.uint64(3)).astype(np.int64)
    out = np.stack([(_mix(base + np.uint64(k + 1)) % np.uint64(tags)).astype(np.int64)
                    for k in range(3)], axis=1)
    return np.where(np.arange(3)[None, :] < count[:, None], out, -1)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class _Population:
    """Slots with Zipf weights; each slot holds one live id and its latent state.

    The state of slot ``s`` is ``ids[s]``, ``vectors[s]`` (shape ``(dim,)``),
    ``bias[s]``, ``attribute[s]`` and, for a population built with
    ``log_price``, ``log_price[s]``.
    """

    def __init__(self, rng: np.random.Generator, renewal_rng: np.random.Generator, slots: int,
                 exponent: float, dim: int, bias_std: float, attribute_count: int,
                 log_price: tuple[float, float] | None = None) -> None:
        self.cdf = _zipf_cdf(slots, exponent)
        self.dim = dim
        self.bias_std = bias_std
        self.attribute_count = attribute_count
        self.price_law = log_price  # (mean, std) of a new id's log price, or None
        self.renewal_rng = renewal_rng  # draws the state of every new id
        # Ids are 1..slots at the start and keep counting up; which id sits in
        # which slot is shuffled so id order says nothing about popularity.
        self.ids = rng.permutation(slots).astype(np.int64) + 1
        self.next_id = slots + 1
        self.vectors = rng.standard_normal((slots, dim))
        self.bias = rng.standard_normal(slots) * bias_std
        self.attribute = rng.integers(0, attribute_count, slots)
        self.log_price = rng.normal(*log_price, slots) if log_price else None

    def fields(self) -> dict[str, np.ndarray]:
        """The per-slot state arrays, by name."""
        names = ("ids", "vectors", "bias", "attribute") + (("log_price",) if self.price_law else ())
        return {name: getattr(self, name) for name in names}

    def slots_for(self, uniform: np.ndarray) -> np.ndarray:
        """The slot each uniform draw in [0, 1) picks, by Zipf weight."""
        return np.searchsorted(self.cdf, uniform, side="right").clip(0, len(self.cdf) - 1)

    def fresh(self, count: int) -> dict[str, np.ndarray]:
        """The states of ``count`` brand-new ids, in the order they arrive.

        One id's draws come after the previous id's, so what an id gets does
        not depend on how many renewals a chunk holds.
        """
        rng = self.renewal_rng
        state = {"ids": np.arange(self.next_id, self.next_id + count, dtype=np.int64),
                 "vectors": np.empty((count, self.dim)), "bias": np.empty(count),
                 "attribute": np.empty(count, dtype=np.int64)}
        if self.price_law:
            state["log_price"] = np.empty(count)
        self.next_id += count
        for k in range(count):
            state["vectors"][k] = rng.standard_normal(self.dim)
            state["bias"][k] = rng.standard_normal() * self.bias_std
            state["attribute"][k] = rng.integers(0, self.attribute_count)
            if self.price_law:
                state["log_price"][k] = rng.normal(*self.price_law)
        return state


def _last_renewal(renew_slot: np.ndarray, renew_at: np.ndarray, slot: np.ndarray,
                  at: np.ndarray, span: int) -> np.ndarray:
    """Index of the last renewal of ``slot[k]`` at or before event ``at[k]``, or -1.

    Renewal ``j`` hands ``renew_slot[j]`` to a new id at event ``renew_at[j]``;
    renewals are listed in the order they happen. Event indices are < ``span``.
    """
    if renew_slot.size == 0:
        return np.full(slot.size, -1)
    keys = renew_slot * span + renew_at
    order = np.argsort(keys, kind="stable")  # a slot renewed twice at one event: keep their order
    pos = np.searchsorted(keys[order], slot * span + at, side="right") - 1
    hit = order[np.maximum(pos, 0)]
    return np.where((pos >= 0) & (renew_slot[hit] == slot), hit, -1)


class _ChunkStates:
    """The states a population's slots pass through during one chunk of events.

    A table holds the chunk-start state of every slot the chunk touches, then
    one row per renewal (in the order they happen). ``row[i]`` is the table
    row event ``i`` sees: its slot's state after the renewals at or before
    event ``i``. A renewal at event ``i`` therefore shows from event ``i`` on,
    never on the events before it.
    """

    def __init__(self, population: _Population, slot: np.ndarray, renew_at: np.ndarray,
                 renew_slot: np.ndarray) -> None:
        n = slot.size
        self.touched = np.unique(np.concatenate([slot, renew_slot]))
        touched_count = self.touched.size
        fresh = population.fresh(renew_slot.size)
        self.table = {name: np.concatenate([values[self.touched], fresh[name]])
                      for name, values in population.fields().items()}
        last = _last_renewal(renew_slot, renew_at, slot, np.arange(n), n + 1)
        self.row = np.where(last >= 0, touched_count + last, np.searchsorted(self.touched, slot))
        # After the chunk each slot keeps the state of its last renewal, if any.
        last = _last_renewal(renew_slot, renew_at, self.touched, np.full(touched_count, n), n + 1)
        self.final_row = np.where(last >= 0, touched_count + last, np.arange(touched_count))

    def seen(self, name: str) -> np.ndarray:
        """``name``'s value that each event sees."""
        return self.table[name][self.row]

    def commit(self, population: _Population) -> None:
        """Write each touched slot's end-of-chunk state back into ``population``."""
        for name, values in population.fields().items():
            values[self.touched] = self.table[name][self.final_row]


def _random_walk(vectors: np.ndarray, row: np.ndarray, keep: float,
                 steps: np.ndarray) -> np.ndarray:
    """Vectors seen by events that each take one random-walk step; moves ``vectors``.

    Event ``i`` sees ``vectors[row[i]]`` as left by the earlier events on that
    row, then moves it to ``keep * seen + steps[i]``: a row active ``k`` times
    takes ``k`` steps, in event order. The arithmetic is the same as one
    event at a time, so the result does not depend on how events are chunked.
    Returns the seen vectors, shape ``(len(row), dim)``.
    """
    # Rank each event among its row's events: the first event of every row
    # moves at once, then every row's second event, and so on, so the loop
    # runs as many times as the busiest row is active, not once per event.
    order = np.argsort(row, kind="stable")
    starts = np.flatnonzero(np.r_[True, row[order][1:] != row[order][:-1]])
    counts = np.diff(np.r_[starts, row.size])
    rank = np.arange(row.size) - np.repeat(starts, counts)
    by_rank = order[np.argsort(rank, kind="stable")]
    seen = np.empty((row.size, vectors.shape[1]))
    lo = 0
    for hi in np.cumsum(np.bincount(rank)).tolist():
        events = by_rank[lo:hi]
        rows = row[events]  # distinct within one rank
        before = vectors[rows]
        seen[events] = before
        vectors[rows] = keep * before + steps[events]
        lo = hi
    return seen


class SyntheticStream:
    """A deterministic (given the seed) stream of labeled ``example`` events.

    The stream depends on the seed alone: every random quantity is drawn
    from its own generator, one event after another, so generating the
    stream in chunks of any size gives the same events.
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or default()
        cfg = self.config
        self.rng = np.random.default_rng(cfg.seed)  # the starting state
        (self._pick_user, self._pick_item, self._burst_rng, self._new_user, self._new_item,
         self._label, self._drift, user_renewal, item_renewal) = self.rng.spawn(9)
        self.users = _Population(self.rng, user_renewal, cfg.user_slots, cfg.user_zipf,
                                 cfg.dim, cfg.user_bias_std, cfg.countries)
        self.items = _Population(self.rng, item_renewal, cfg.item_slots, cfg.item_zipf,
                                 cfg.dim, cfg.item_bias_std, cfg.categories,
                                 log_price=(2.5, 0.8))
        self.affinity = self.rng.standard_normal((cfg.countries, cfg.categories)) * cfg.context_std
        # Hour-of-day effect per (hour, category), tabled once.
        hours = np.arange(24)[:, None]
        self._hour_effect = 0.3 * np.sin(2 * np.pi * hours / 24 + np.arange(cfg.categories))
        # Drawn after everything above, so streams without tags are unchanged.
        if cfg.tags:
            self._tag_affinity = self.rng.standard_normal((cfg.countries, cfg.tags)) * cfg.tag_std
        (self._delay,) = self.rng.spawn(1)
        self.emitted = 0
        self._bursts: dict[int, int] = {}  # user slot -> events left in its burst

    def _chunk(self, n: int) -> tuple[list[Event], np.ndarray, np.ndarray]:
        """``n`` labeled events, their true click probabilities and click times (-1: none)."""
        cfg, users, items = self.config, self.users, self.items
        user_slot = users.slots_for(self._pick_user.random(n))
        item_slot = items.slots_for(self._pick_item.random(n))
        burst_at, burst_slot = self._route_bursts(user_slot)
        new_user_at = np.flatnonzero(self._new_user.random(n) < cfg.new_user_rate)
        new_item_at = np.flatnonzero(self._new_item.random(n) < cfg.new_item_rate)
        # User renewals in event order; at one event, a burst's comes first.
        renew_at = np.concatenate([burst_at, new_user_at])
        renew_slot = np.concatenate([burst_slot, user_slot[new_user_at]])
        order = np.argsort(renew_at, kind="stable")
        user = _ChunkStates(users, user_slot, renew_at[order], renew_slot[order])
        item = _ChunkStates(items, item_slot, new_item_at, item_slot[new_item_at])

        if cfg.drift > 0:
            # Active users' tastes move: a norm-preserving random-walk step
            # each time the user is active, after the event it takes part in.
            keep = math.sqrt(1 - cfg.drift ** 2)
            steps = cfg.drift * self._drift.standard_normal((n, cfg.dim))
            u = _random_walk(user.table["vectors"], user.row, keep, steps)
        else:
            u = user.seen("vectors")
        v = item.seen("vectors")
        country = user.seen("attribute")
        category = item.seen("attribute")
        log_price = item.seen("log_price")
        offsets_ms = (np.arange(self.emitted, self.emitted + n) * 1000.0
                      / cfg.events_per_second).astype(np.int64)
        timestamps = cfg.start_ms + offsets_ms
        hour = (timestamps // 3_600_000) % 24
        logit = (cfg.base_logit + user.seen("bias") + item.seen("bias")
                 + cfg.interaction_scale * (u * v).sum(1) / math.sqrt(cfg.dim)
                 + self.affinity[country, category] + self._hour_effect[hour, category]
                 + cfg.price_effect * (log_price - 2.5))
        item_ids = item.seen("ids")
        if cfg.tags:
            tags = _item_tags(item_ids, cfg.tags)
            has = tags >= 0
            effect = np.where(has, self._tag_affinity[country[:, None], tags.clip(0)], 0.0)
            logit = logit + effect.sum(1) / has.sum(1)
        truth = 1.0 / (1.0 + np.exp(-logit))
        clicked = self._label.random(n) < truth
        delay_ms = (1000 * cfg.click_delay_median_s
                    * np.exp(cfg.click_delay_sigma * self._delay.standard_normal(n))
                    ).astype(np.int64)
        labels = (clicked & (delay_ms <= 1000 * cfg.join_window_s)).astype(np.float64)
        price = np.exp(log_price)
        user_ids = user.seen("ids")
        user.commit(users)
        item.commit(items)

        events = []
        for i in range(n):
            features = {"category": (f"c{category[i]}",), "country": (f"k{country[i]}",),
                        "hour": (int(hour[i]),), "price": (round(float(price[i]), 2),)}
            if cfg.tags:
                features["tags"] = tuple(f"t{t}" for t in tags[i] if t >= 0)
            events.append(Event(
                type=EXAMPLE, user_id=int(user_ids[i]), item_id=int(item_ids[i]),
                timestamp_ms=int(timestamps[i]), request_id=f"s{self.emitted + i}",
                event_id=f"e{self.emitted + i}", features=features, label=float(labels[i])))
        self.emitted += n
        return events, truth, np.where(clicked, timestamps + delay_ms, -1)

    def _route_bursts(self, user_slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Route events to active bursts, in place; a burst starts by handing a slot to a new user.

        Returns the burst starts as (event index, user slot) arrays, in event
        order; the caller renews those slots from that event on.
        """
        cfg, rng = self.config, self._burst_rng
        starts_at: list[int] = []
        starts_slot: list[int] = []
        if cfg.burst_rate == 0:
            return np.array(starts_at, dtype=np.int64), np.array(starts_slot, dtype=np.int64)
        for i in range(user_slot.size):
            if rng.random() < cfg.burst_rate:
                slot = int(self.users.slots_for(rng.random()))
                starts_at.append(i)
                starts_slot.append(slot)
                self._bursts[slot] = max(1, int(rng.geometric(1.0 / cfg.burst_length)))
            if self._bursts and rng.random() < 0.5:
                slot = list(self._bursts)[int(rng.integers(len(self._bursts)))]
                user_slot[i] = slot
                self._bursts[slot] -= 1
                if self._bursts[slot] <= 0:
                    del self._bursts[slot]
        return np.array(starts_at, dtype=np.int64), np.array(starts_slot, dtype=np.int64)

    def events_with_truth(self, n: int, chunk: int = 1024) -> Iterator[tuple[Event, float]]:
        """``n`` events, each with its true click probability.

        ``chunk`` is how many events are generated per vectorised batch; it
        changes speed and memory only, never the events.
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk!r}: must be >= 1")
        left = n
        while left > 0:
            events, truth, _ = self._chunk(min(chunk, left))
            left -= len(events)
            yield from zip(events, truth.tolist())

    def events(self, n: int, chunk: int = 1024) -> Iterator[Event]:
        """``n`` time-ordered labeled examples (``chunk`` as in :meth:`events_with_truth`)."""
        for event, _ in self.events_with_truth(n, chunk):
            yield event

    def joined_events(self, n: int, chunk: int = 1024) -> Iterator[Event]:
        """The same stream in production form, in event-time order.

        ``n`` impressions (the examples of :meth:`events`, unlabeled, same
        ids and ``request_id``) and a ``click`` (event_id ``k<i>``) for each
        clicked one, at its delay, late clicks included. A joiner with
        ``join_window_s`` labels the impressions as :meth:`events` does.
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk!r}: must be >= 1")
        clicks: list[tuple[int, int, Event]] = []  # (time, impression index, click)
        left, seq = n, 0
        while left > 0:
            events, _, click_at = self._chunk(min(chunk, left))
            left -= len(events)
            for event, at in zip(events, click_at.tolist()):
                seq += 1
                while clicks and clicks[0][0] <= event.timestamp_ms:
                    yield heapq.heappop(clicks)[2]
                yield event._replace(type=IMPRESSION, label=None)
                if at >= 0:
                    heapq.heappush(clicks, (at, seq, Event(
                        "click", event.user_id, event.item_id, at, request_id=event.request_id,
                        event_id="k" + event.event_id[1:])))
        while clicks:
            yield heapq.heappop(clicks)[2]


def write_jsonl(path: str | os.PathLike[str], n: int, config: SyntheticConfig | None = None,
                form: StreamForm | str = StreamForm.LABELED) -> int:
    """Write ``n`` examples of the stream (``form``: as examples, or as impressions
    and clicks) as JSONL; returns the count of events written."""
    stream = SyntheticStream(config)
    events = stream.joined_events(n) if StreamForm(form) is StreamForm.JOINED \
        else stream.events(n)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for event in events:
            f.write(encode_json(event).decode())
            f.write("\n")
            written += 1
    return written

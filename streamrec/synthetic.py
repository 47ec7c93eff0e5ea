"""Synthetic event streams whose ground truth is known.

Users and items carry latent preference vectors; a click happens with
probability ``sigmoid(bias + user/item effects + <u, v> + context)``. The
stream has the properties that make online learning matter:

- Zipf popularity: events pick users and items from *slots* with Zipf
  weights, so a few slots are hot and most are cold.
- New ids: with probability ``new_user_rate`` / ``new_item_rate`` an event's
  slot is handed to a brand-new id (fresh latent vector), which inherits the
  slot's popularity. New items therefore appear *at every popularity rank*,
  including the head (popularity churn), and old ids fade out.
- Drift: every time a user is active its preference vector takes a small
  random-walk step (``drift``), so what was learned goes stale.
- Bursts (optional): a new user arrives with a burst of consecutive events,
  as real sessions do; this is where per-event adaptivity shows.

Because the true click probability of every example is known,
:meth:`SyntheticStream.events_with_truth` lets tests and benchmarks measure
the Bayes-optimal AUC of the very stream a model learned from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ingest.decode import encode_json
from ingest.event import EXAMPLE, Event

__all__ = [
    "SyntheticConfig",
    "SyntheticStream",
    "PRESETS",
    "default",
    "drifting",
    "bursty_new_users",
    "popularity_churn",
    "dense_vs_sparse_users",
    "write_jsonl",
]


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

    def __post_init__(self) -> None:
        for name in ("user_slots", "item_slots", "dim", "categories", "countries",
                     "burst_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("new_user_rate", "new_item_rate", "burst_rate", "drift"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"synthetic.{name}={getattr(self, name)!r}: must be in [0, 1)")
        if self.events_per_second <= 0:
            raise ValueError(f"synthetic.events_per_second={self.events_per_second!r}: "
                             "must be > 0")


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


PRESETS = {f.__name__: f for f in (default, drifting, bursty_new_users, popularity_churn,
                                   dense_vs_sparse_users)}


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class _Population:
    """Slots with Zipf weights; each slot holds one live id and its latent state."""

    def __init__(self, rng: np.random.Generator, slots: int, exponent: float, dim: int,
                 bias_std: float, attribute_count: int) -> None:
        self.rng = rng
        self.cdf = _zipf_cdf(slots, exponent)
        self.dim = dim
        self.bias_std = bias_std
        self.attribute_count = attribute_count
        # Ids are 1..slots at the start and keep counting up; which id sits in
        # which slot is shuffled so id order says nothing about popularity.
        self.ids = rng.permutation(slots).astype(np.int64) + 1
        self.next_id = slots + 1
        self.vectors = rng.standard_normal((slots, dim))
        self.bias = rng.standard_normal(slots) * bias_std
        self.attribute = rng.integers(0, attribute_count, slots)

    def sample(self, n: int) -> np.ndarray:
        return np.searchsorted(self.cdf, self.rng.random(n), side="right").clip(0, len(self.cdf) - 1)

    def renew(self, slots: np.ndarray) -> None:
        """Hand each slot to a brand-new id."""
        for slot in slots:
            self.ids[slot] = self.next_id
            self.next_id += 1
            self.vectors[slot] = self.rng.standard_normal(self.dim)
            self.bias[slot] = self.rng.standard_normal() * self.bias_std
            self.attribute[slot] = self.rng.integers(0, self.attribute_count)


class SyntheticStream:
    """A deterministic (given the seed) stream of labeled ``example`` events."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or default()
        cfg = self.config
        self.rng = np.random.default_rng(cfg.seed)
        self.users = _Population(self.rng, cfg.user_slots, cfg.user_zipf, cfg.dim,
                                 cfg.user_bias_std, cfg.countries)
        self.items = _Population(self.rng, cfg.item_slots, cfg.item_zipf, cfg.dim,
                                 cfg.item_bias_std, cfg.categories)
        self.affinity = self.rng.standard_normal((cfg.countries, cfg.categories)) * cfg.context_std
        self.log_price = self.rng.normal(2.5, 0.8, cfg.item_slots)
        self.emitted = 0
        self._bursts: dict[int, int] = {}  # user slot -> events left in its burst

    def _chunk(self, n: int) -> tuple[list[Event], np.ndarray]:
        cfg, users, items, rng = self.config, self.users, self.items, self.rng
        user_slot = users.sample(n)
        item_slot = items.sample(n)
        if cfg.burst_rate > 0:
            user_slot = self._apply_bursts(user_slot)
        renew_users = np.unique(user_slot[rng.random(n) < cfg.new_user_rate])
        users.renew(renew_users)
        renew_items = np.unique(item_slot[rng.random(n) < cfg.new_item_rate])
        items.renew(renew_items)
        self.log_price[renew_items] = rng.normal(2.5, 0.8, renew_items.size)

        u = users.vectors[user_slot]
        v = items.vectors[item_slot]
        country = users.attribute[user_slot]
        category = items.attribute[item_slot]
        offsets_ms = (np.arange(self.emitted, self.emitted + n) * 1000.0
                      / cfg.events_per_second).astype(np.int64)
        timestamps = cfg.start_ms + offsets_ms
        hour = (timestamps // 3_600_000) % 24
        hour_effect = 0.3 * np.sin(2 * np.pi * hour / 24 + category)
        logit = (cfg.base_logit + users.bias[user_slot] + items.bias[item_slot]
                 + cfg.interaction_scale * (u * v).sum(1) / math.sqrt(cfg.dim)
                 + self.affinity[country, category] + hour_effect
                 + cfg.price_effect * (self.log_price[item_slot] - 2.5))
        truth = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < truth).astype(np.float64)
        if cfg.drift > 0:
            # Active users' tastes move: a norm-preserving random-walk step.
            keep = math.sqrt(1 - cfg.drift ** 2)
            step = rng.standard_normal((user_slot.size, cfg.dim))
            users.vectors[user_slot] = keep * u + cfg.drift * step
        price = np.exp(self.log_price[item_slot])

        user_ids, item_ids = users.ids[user_slot], items.ids[item_slot]
        events = []
        for i in range(n):
            events.append(Event(
                type=EXAMPLE, user_id=int(user_ids[i]), item_id=int(item_ids[i]),
                timestamp_ms=int(timestamps[i]), request_id=f"s{self.emitted + i}",
                event_id=f"e{self.emitted + i}",
                features={"category": (f"c{category[i]}",), "country": (f"k{country[i]}",),
                          "hour": (int(hour[i]),), "price": (round(float(price[i]), 2),)},
                label=float(labels[i])))
        self.emitted += n
        return events, truth

    def _apply_bursts(self, user_slot: np.ndarray) -> np.ndarray:
        """Route events to active bursts; a burst starts by handing a slot to a new user."""
        cfg, rng = self.config, self.rng
        for i in range(user_slot.size):
            if rng.random() < cfg.burst_rate:
                slot = int(self.users.sample(1)[0])
                self.users.renew(np.array([slot]))
                self._bursts[slot] = max(1, int(rng.geometric(1.0 / cfg.burst_length)))
            if self._bursts and rng.random() < 0.5:
                slot = list(self._bursts)[int(rng.integers(len(self._bursts)))]
                user_slot[i] = slot
                self._bursts[slot] -= 1
                if self._bursts[slot] <= 0:
                    del self._bursts[slot]
        return user_slot

    def events_with_truth(self, n: int, chunk: int = 1024) -> Iterator[tuple[Event, float]]:
        """``n`` events, each with its true click probability."""
        left = n
        while left > 0:
            events, truth = self._chunk(min(chunk, left))
            left -= len(events)
            yield from zip(events, truth.tolist())

    def events(self, n: int, chunk: int = 1024) -> Iterator[Event]:
        """``n`` time-ordered labeled examples."""
        for event, _ in self.events_with_truth(n, chunk):
            yield event


def write_jsonl(path: str | os.PathLike[str], n: int, config: SyntheticConfig | None = None
                ) -> int:
    """Write ``n`` events of the stream as JSONL; returns the count written."""
    stream = SyntheticStream(config)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for event in stream.events(n):
            f.write(encode_json(event).decode())
            f.write("\n")
            written += 1
    return written

"""Per-id outcome history as model features, exact per event inside a mini-batch.

Why: real logs are bursty. A new user's first dozens of events often share
one mini-batch, so a batch learner scores all of them with the same untrained
row, while a per-event learner (River, Vowpal Wabbit) has adapted after the
first few. These features recover that adaptivity at mini-batch cost: for each
history feature (e.g. ``user_id``, ``item_id``) a table keeps, per id, how many
examples it took part in (``n``) and how many were positive (``c``). An
example's features are computed from the counts *before* it — the stored
counts plus an exclusive prefix over the earlier examples of the same id in
the same batch — so no example sees its own label (test-then-train stays
honest), yet the 30th event of a burst sees the first 29 outcomes.

Counts live in ordinary dynamic tables (named ``<feature>#history``, two
columns), so they are sharded, expired with the TTL, checkpointed and synced to
serving like any embedding row. Serving computes the same features from the
synced counts (no prefix: a request has no labels).

Counts are capped at ``cap`` sightings (both scaled down together), which
turns them into an exponentially-forgetting window: preferences drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from streamrec import native
from streamrec.model.tables.base import EmbeddingTable, expire_tables
from streamrec.model.tables.group import unique_pairs
from streamrec.model.tables.store import TableStore, stores_of
from streamrec.model.tables.sort import stable_argsort
from streamrec.ingest.batch import KeyedJaggedTensor

__all__ = ["HistoryFeatures", "history_table_name", "history_inputs"]

Lookup = Callable[[str, torch.Tensor], torch.Tensor]


def history_table_name(feature: str) -> str:
    return f"{feature}#history"


def _first_ids(sparse: KeyedJaggedTensor, features: list[str]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per feature, one id per example (the first) and where there is one (``present``)."""
    keys = sparse.keys()
    batch = sparse.stride()
    lengths = sparse.lengths().to(torch.int64).view(len(keys), batch)
    values = sparse.values()
    ends = torch.cumsum(lengths.sum(dim=1), 0).tolist()
    out = {}
    for feature in features:
        k = keys.index(feature)
        start = ends[k - 1] if k else 0
        n = lengths[k]
        if ends[k] - start == batch and bool((n == 1).all()):  # one id each: the common case
            out[feature] = values[start:ends[k]], torch.ones(batch, dtype=torch.bool)
            continue
        offsets = start + torch.cumsum(n, 0) - n
        present = n > 0
        ids = torch.zeros(batch, dtype=torch.int64)
        ids[present] = values[offsets[present]]
        out[feature] = ids, present
    return out


def history_inputs(counts: torch.Tensor, prior_ctr: torch.Tensor, strength: float) -> torch.Tensor:
    """Model inputs from ``[B, H, 2]`` (n, c) counts: ``[B, 2H]``.

    Per feature: log1p(n) / 5, and the log-odds of the smoothed CTR
    (c + s·p) / (n + s) relative to the prior p, which is 0 for an unseen id.
    """
    n, c = counts[..., 0], counts[..., 1]
    p = prior_ctr.clamp(1e-4, 1 - 1e-4)
    smoothed = ((c + strength * p) / (n + strength)).clamp(1e-4, 1 - 1e-4)
    lift = torch.logit(smoothed) - torch.logit(p)
    return torch.stack([torch.log1p(n) / 5.0, lift], dim=2).flatten(1)


class HistoryFeatures:
    """Computes history inputs for a batch and updates the counts after the step.

    ``tables`` maps history table names (:func:`history_table_name`) to the
    tables; the counts of ``features[i]`` live in its history table.
    """

    def __init__(self, features: list[str], tables: Mapping[str, EmbeddingTable],
                 cap: float = 200.0,
                 strength: float = 10.0) -> None:
        self.features = list(features)
        self.tables = {f: tables[history_table_name(f)] for f in self.features}
        self._by_name = {history_table_name(f): t for f, t in self.tables.items()}
        self.cap = cap
        self.strength = strength
        self._pending: list[tuple[TableStore, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Tables looked up together, one pass per store: (store, [(feature position, tag)]).
        position = {f: h for h, f in enumerate(self.features)}
        self._units: list[tuple[TableStore, list[tuple[int, int]]]] = [
            (store, [(position[f], self.tables[f].tag) for f in names])
            for store, names in stores_of(self.tables)]

    def counts(self, sparse: KeyedJaggedTensor, labels: torch.Tensor | None, now_ms: int
               ) -> torch.Tensor:
        """``[B, H, 2]`` counts before each example; with ``labels``, remembers the update."""
        batch = sparse.stride()
        n_features = len(self.features)
        out = torch.zeros((batch * n_features, 2))
        self._pending = []
        train = labels is not None
        firsts = _first_ids(sparse, self.features)
        for store, members in self._units:
            # Every (example, feature) pair of this unit, feature-major, each
            # feature's examples in batch (= event-time) order.
            ids, slots, tags = [], [], []
            for h, tag in members:
                first, present = firsts[self.features[h]]
                at = torch.nonzero(present).reshape(-1)
                ids.append(first.index_select(0, at))
                slots.append(at * n_features + h)
                tags.append(torch.full_like(at, tag))
            all_ids, all_slots, all_tags = torch.cat(ids), torch.cat(slots), torch.cat(tags)
            n_tags = 1 + max(tag for _, tag in members)
            pair_ids, pair_tags, inverse, seen = unique_pairs(all_ids, all_tags, n_tags)
            rows = store.lookup(pair_tags, pair_ids, seen, now_ms=now_ms, train=train)
            stored = store.read(rows)
            if train:
                assert labels is not None
                y = labels.index_select(0, all_slots // n_features)
                if native.available(stored, y):
                    before, totals = native.history_prefix(stored, inverse, y)
                else:
                    before = stored.index_select(0, inverse) + _exclusive_prefix(inverse, y)
                    totals = torch.zeros((pair_ids.numel(), 2)).index_add_(
                        0, inverse, torch.stack([torch.ones_like(y), y], dim=1))
                self._pending.append((store, rows, stored, totals))
            else:
                before = stored.index_select(0, inverse)
            out.index_copy_(0, all_slots, before)
        return out.view(batch, n_features, 2)

    def table_names(self) -> list[str]:
        """The names of the history tables, one per feature."""
        return list(self._by_name)

    def expire(self, now_ms: int) -> int:
        """One bounded slice of the history tables' expiry sweep; returns rows freed."""
        return expire_tables(self._by_name, now_ms)

    def discard(self) -> None:
        """Forget the last training batch's outcomes without adding them (a skipped step)."""
        self._pending = []

    def commit(self) -> None:
        """Add the last training batch's outcomes to the stored counts."""
        for store, rows, stored, totals in self._pending:
            new = stored + totals
            n = new[:, :1]
            # Cap the count: scale n and c together, forgetting old outcomes.
            new = torch.where(n > self.cap, new * (self.cap / n.clamp(min=1e-9)), new)
            keep = torch.nonzero(rows >= 0).reshape(-1)
            store.set_rows(rows.index_select(0, keep), new.index_select(0, keep))
        self._pending = []


def _exclusive_prefix(key: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, 2]``: per element, (count, sum of y) over the earlier elements with its key.

    Sort stably by key (keeping batch order within a key), cumulative sums
    within each run, minus the element itself.
    """
    order = stable_argsort(key)
    sorted_key, sorted_y = key.index_select(0, order), y.index_select(0, order)
    run_start = torch.ones_like(sorted_key, dtype=torch.bool)
    run_start[1:] = sorted_key[1:] != sorted_key[:-1]
    prefix = torch.stack([torch.ones_like(sorted_y), sorted_y], dim=1)
    csum = torch.cumsum(prefix, 0) - prefix
    base = csum[run_start][torch.cumsum(run_start.to(torch.int64), 0) - 1]
    exclusive = torch.zeros_like(prefix)
    exclusive.index_copy_(0, order, csum - base)
    return exclusive

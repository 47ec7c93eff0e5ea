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
from streamrec.model.tables.base import expire_tables
from streamrec.model.tables.group import TableGroup, group_views
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

    def __init__(self, features: list[str], tables: Mapping[str, object], cap: float = 200.0,
                 strength: float = 10.0) -> None:
        self.features = list(features)
        self.tables = {f: tables[history_table_name(f)] for f in self.features}
        self._by_name = {history_table_name(f): t for f, t in self.tables.items()}
        self.cap = cap
        self.strength = strength
        self._pending: list[tuple[object, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Tables looked up together: (target, [(feature position, tag)]). The
        # views of one TableGroup go in one pass; any other table alone.
        groups, single = group_views(self.tables)
        position = {f: h for h, f in enumerate(self.features)}
        self._units: list[tuple[object, list[tuple[int, int]]]] = [
            (group, [(position[f], self.tables[f].tag) for f in names])  # type: ignore[attr-defined]
            for group, names in groups]
        self._units += [(self.tables[f], [(position[f], 0)]) for f in single]

    def counts(self, sparse: KeyedJaggedTensor, labels: torch.Tensor | None, now_ms: int
               ) -> torch.Tensor:
        """``[B, H, 2]`` counts before each example; with ``labels``, remembers the update."""
        batch = sparse.stride()
        n_features = len(self.features)
        out = torch.zeros((batch * n_features, 2))
        self._pending = []
        train = labels is not None
        firsts = _first_ids(sparse, self.features)
        for target, members in self._units:
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
            pair_ids, pair_tags, inverse, seen = native.unique_pairs(all_ids, all_tags)
            if isinstance(target, TableGroup):
                rows = target.lookup(pair_tags, pair_ids, seen, now_ms=now_ms, train=train)
            else:
                rows = target.lookup(pair_ids, seen, now_ms=now_ms, train=train)  # type: ignore[attr-defined]
            stored = target.read(rows)  # type: ignore[attr-defined]
            if train:
                assert labels is not None
                y = labels.index_select(0, all_slots // n_features)
                before, totals = native.history_prefix(stored, inverse, y)
                self._pending.append((target, rows, stored, totals))
            else:
                before = stored.index_select(0, inverse)
            out.index_copy_(0, all_slots, before)
        return out.view(batch, n_features, 2)

    def expire(self, now_ms: int) -> int:
        """One bounded slice of the history tables' expiry sweep; returns rows freed."""
        return expire_tables(self._by_name, now_ms)

    def discard(self) -> None:
        """Forget the last training batch's outcomes without adding them (a skipped step)."""
        self._pending = []

    def commit(self) -> None:
        """Add the last training batch's outcomes to the stored counts."""
        for table, rows, stored, totals in self._pending:
            new = stored + totals
            n = new[:, :1]
            # Cap the count: scale n and c together, forgetting old outcomes.
            new = torch.where(n > self.cap, new * (self.cap / n.clamp(min=1e-9)), new)
            keep = torch.nonzero(rows >= 0).reshape(-1)
            table.set_rows(rows.index_select(0, keep), new.index_select(0, keep))  # type: ignore[attr-defined]
        self._pending = []

"""Per-id outcome history as model features, exact per event inside a mini-batch.

Per id, how many examples it took part in (``n``) and how many were positive
(``c``), from the counts before each example: docs/design.md, "History features".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import torch

from streamrec import native
from streamrec.model.tables.base import EmbeddingTable, expire_tables
from streamrec.model.tables.distributed import DistributedTableStore
from streamrec.model.tables.store import TableStore, stores_of
from streamrec.model.tables.sort import exclusive_sums
from streamrec.ingest.batch import KeyedJaggedTensor

__all__ = ["HistoryFeatures", "history_table_name", "history_inputs"]

Lookup = Callable[[str, torch.Tensor], torch.Tensor]


class _Pairs(NamedTuple):
    slots: torch.Tensor  # [P] example * H + feature, per (example, feature) pair
    ids: torch.Tensor  # [U] unique ids
    tags: torch.Tensor  # [U] their tables' tags in the unit
    inverse: torch.Tensor  # [P] position of each pair's id in ``ids``
    seen: torch.Tensor  # [U] pairs per unique id


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
        # Distributed stores whose ranks write the batch's counts they own at commit.
        self._owned: list[DistributedTableStore] = []
        # Tables looked up together, one pass per store: (store, [(feature position, tag)]).
        position = {f: h for h, f in enumerate(self.features)}
        self._units: list[tuple[TableStore, list[tuple[int, int]]]] = [
            (store, [(position[f], self.tables[f].tag) for f in names])
            for store, names in stores_of(self.tables)]

    def _pairs(self, sparse: KeyedJaggedTensor) -> Iterator[tuple[TableStore, _Pairs]]:
        """Per lookup unit: every (example, feature) pair's id, feature-major, each
        feature's examples in batch (= event-time) order, and the unique ids."""
        n_features = len(self.features)
        firsts = _first_ids(sparse, self.features)
        for store, members in self._units:
            ids, slots, tags = [], [], []
            for h, tag in members:
                first, present = firsts[self.features[h]]
                at = torch.nonzero(present).reshape(-1)
                ids.append(first.index_select(0, at))
                slots.append(at * n_features + h)
                tags.append(torch.full_like(at, tag))
            all_ids, all_slots, all_tags = torch.cat(ids), torch.cat(slots), torch.cat(tags)
            pair_ids, pair_tags, inverse, seen = native.unique_pairs(all_ids, all_tags)
            yield store, _Pairs(all_slots, pair_ids, pair_tags, inverse, seen)

    def counts(self, sparse: KeyedJaggedTensor, labels: torch.Tensor | None, now_ms: int
               ) -> torch.Tensor:
        """``[B, H, 2]`` counts before each example; with ``labels``, remembers the update."""
        batch = sparse.stride()
        n_features = len(self.features)
        out = torch.zeros((batch * n_features, 2))
        self._pending, self._owned = [], []
        train = labels is not None
        for store, pairs in self._pairs(sparse):
            if isinstance(store, DistributedTableStore):  # counts kept by the ids' owners
                before = self._ranks_counts(store, pairs, labels, n_features, now_ms)
                out.index_copy_(0, pairs.slots, before)
                continue
            rows = store.lookup(pairs.tags, pairs.ids, pairs.seen, now_ms=now_ms, train=train)
            stored = store.read(rows)
            if train:
                assert labels is not None
                y = labels.index_select(0, pairs.slots // n_features)
                before, totals = native.history_prefix(stored, pairs.inverse, y)
                self._pending.append((store, rows, stored, totals))
            else:
                before = stored.index_select(0, pairs.inverse)
            out.index_copy_(0, pairs.slots, before)
        return out.view(batch, n_features, 2)

    def _ranks_counts(self, store: DistributedTableStore, pairs: _Pairs,
                      labels: torch.Tensor | None,
                      n_features: int, now_ms: int) -> torch.Tensor:
        """:meth:`counts` of one unit on a ``DistributedTableStore``: the stored counts
        and the earlier ranks' outcomes come from the owners (``count_before``),
        this rank's earlier examples are added here."""
        seen = pairs.seen.to(torch.float32)
        if labels is None:
            base = store.count_before(pairs.tags, pairs.ids, torch.zeros((seen.numel(), 2)),
                                      now_ms, train=False)
            return base.index_select(0, pairs.inverse)
        y = labels.index_select(0, pairs.slots // n_features)
        clicks = torch.zeros_like(seen).index_add_(0, pairs.inverse, y)
        base = store.count_before(pairs.tags, pairs.ids, torch.stack([seen, clicks], dim=1),
                                  now_ms, train=True)
        self._owned.append(store)
        before, _ = native.history_prefix(base, pairs.inverse, y)
        return before

    def observe(self, sparse: KeyedJaggedTensor, outcomes: torch.Tensor, now_ms: int
                ) -> torch.Tensor:
        """Add outcomes to the stored counts now; ``[B, H, 2]`` counts before each example.

        ``outcomes`` is ``[B, 2]``: what each example adds to (n, c), in
        order; a row of zeros asks for the counts only (an impression whose
        label is not known yet). The counts of an example are those stored
        plus the outcomes of the earlier examples of the same id, as in
        :meth:`counts`, and are what training on the example later reads
        (it then passes them to the step instead of calling ``counts``).
        Ids with an outcome count as sightings for their table's admission.
        """
        batch = sparse.stride()
        n_features = len(self.features)
        out = torch.zeros((batch * n_features, 2))
        for store, pairs in self._pairs(sparse):
            adds = outcomes.index_select(0, pairs.slots // n_features)
            totals = torch.zeros((pairs.ids.numel(), 2)).index_add_(0, pairs.inverse, adds)
            sightings = torch.zeros_like(pairs.seen).index_add_(
                0, pairs.inverse, (adds.abs().sum(dim=1) > 0).to(pairs.seen.dtype))
            rows = store.lookup(pairs.tags, pairs.ids, pairs.seen, now_ms=now_ms, train=False)
            learn = torch.nonzero(sightings > 0).reshape(-1)
            if learn.numel():
                rows.index_copy_(0, learn, store.lookup(
                    pairs.tags.index_select(0, learn), pairs.ids.index_select(0, learn),
                    sightings.index_select(0, learn), now_ms=now_ms, train=True))
            stored = store.read(rows)
            before = stored.index_select(0, pairs.inverse) + exclusive_sums(pairs.inverse, adds)
            out.index_copy_(0, pairs.slots, before)
            keep = learn[rows.index_select(0, learn) >= 0]
            if keep.numel():
                self._store(store, rows.index_select(0, keep),
                            stored.index_select(0, keep) + totals.index_select(0, keep))
        return out.view(batch, n_features, 2)

    def _store(self, store: TableStore, rows: torch.Tensor, new: torch.Tensor) -> None:
        """Write counts, capped: n and c scale down together, forgetting old outcomes."""
        n = new[:, :1]
        new = torch.where(n > self.cap, new * (self.cap / n.clamp(min=1e-9)), new)
        store.set_rows(rows, new)

    def table_names(self) -> list[str]:
        """The names of the history tables, one per feature."""
        return list(self._by_name)

    def expire(self, now_ms: int) -> int:
        """One bounded slice of the history tables' expiry sweep; returns rows freed."""
        return expire_tables(self._by_name, now_ms)

    def discard(self) -> None:
        """Forget the last training batch's outcomes without adding them (a skipped step)."""
        self._pending, self._owned = [], []

    def commit(self) -> None:
        """Add the last training batch's outcomes to the stored counts."""
        for table, rows, stored, totals in self._pending:
            keep = torch.nonzero(rows >= 0).reshape(-1)
            self._store(table, rows.index_select(0, keep),
                        (stored + totals).index_select(0, keep))
        for store in self._owned:
            store.commit_counts(self._store)
        self._pending, self._owned = [], []

"""DynamicEmbeddingCollection: KeyedJaggedTensor of raw ids -> pooled embeddings.

The dynamic-table counterpart of TorchRec's EmbeddingBagCollection: features
look up tables (several features may share one, as torchrec's
``feature_names``), rows are mean-pooled, and a sparse Adagrad step touches only
the rows a batch used. Each table store is looked up in one pass for all of its
features (docs/tables.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from streamrec import native
from streamrec.model.tables.base import EmbeddingTable, expire_tables
from streamrec.model.tables.store import TableStore, stores_of
from streamrec.ingest.batch import KeyedJaggedTensor

__all__ = ["DynamicEmbeddingCollection"]


def _masked(rows: torch.Tensor, margin: torch.Tensor, on: torch.Tensor | None = None
            ) -> torch.Tensor:
    """OptEmbed's mask: rows with ``margin`` (L1 norm minus threshold) <= 0 read as zero.

    Only rows where ``on`` (default: all) are masked. Straight-through
    estimators both ways (OptEmbed eq. 5): the threshold gets the gradient of
    the step as if it were the identity in ``margin``, and a masked row still
    gets its full gradient, as if unmasked. Without the latter a new id, whose
    small initial row is under the threshold, would read zero and receive
    nothing from then on: once the threshold passed the initial norm, no new
    id could ever be learned.
    """
    hard = (margin > 0).to(rows.dtype)
    step = hard + margin - margin.detach()
    off = 1 - hard
    if on is not None:
        step = torch.where(on, step, torch.ones_like(step))
        off = torch.where(on, off, torch.zeros_like(off))
    return rows * step.unsqueeze(1) + (rows - rows.detach()) * off.unsqueeze(1)


class DynamicEmbeddingCollection:
    """Pools each feature's rows and applies row-wise Adagrad after backward.

    ``tables`` maps table names to tables; ``features`` maps each feature to
    the table it looks up, in the order of the pooled output (default: one
    table per feature, named after it). ``prune_alpha`` is by table.

    Usage per step: ``pooled = ec.forward(kjt, now_ms)`` → loss → ``backward()``
    → ``ec.step()``. Not thread-safe; the trainer serialises steps.
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable],
                 prune_alpha: Mapping[str, float] | None = None,
                 features: Mapping[str, str] | None = None) -> None:
        self.tables = dict(tables)
        self.table_of = dict(features) if features is not None else {t: t for t in self.tables}
        unknown = sorted(set(self.table_of.values()) - set(self.tables))
        if unknown:
            raise ValueError(f"features look up tables that are not given: {unknown}")
        self.features = list(self.table_of)
        self._leaves: list[tuple[TableStore, torch.Tensor, torch.Tensor]] = []
        # OptEmbed (Lyu et al., CIKM 2022): one learnable threshold per pruned
        # table on its rows' L1 norm, starting at 0 (nothing pruned).
        self.prune_alpha = {t: a for t, a in (prune_alpha or {}).items() if a > 0}
        self._pruned_index = {t: i for i, t in enumerate(self.prune_alpha)}
        self.thresholds = torch.nn.Parameter(torch.zeros(len(self.prune_alpha)))
        # Features by the store that holds their tables, in order of first feature.
        by_store = stores_of({f: self.tables[t] for f, t in self.table_of.items()})
        self._stores = [(store, features_) for store, features_ in by_store]

    def threshold_state(self) -> dict[str, torch.Tensor]:
        """The pruned tables' thresholds by table name, for deltas."""
        values = self.thresholds.detach()
        return {t: values[i].clone() for t, i in self._pruned_index.items()}

    def set_thresholds(self, by_table: Mapping[str, torch.Tensor]) -> None:
        """Load every pruned table's threshold (one value each) from ``by_table``."""
        with torch.no_grad():
            for t, i in self._pruned_index.items():
                self.thresholds[i] = by_table[t].reshape(())

    def parameters(self) -> list[torch.nn.Parameter]:
        """Dense parameters to train with the model's optimizer (the thresholds)."""
        return [self.thresholds] if self.prune_alpha else []

    def regularizer(self) -> torch.Tensor:
        """OptEmbed's sparsity term: sum over pruned tables of alpha * exp(-t)."""
        if not self.prune_alpha:
            return torch.zeros(())
        alpha = torch.tensor(list(self.prune_alpha.values()))
        return (alpha * torch.exp(-self.thresholds)).sum()

    def forward(self, sparse: KeyedJaggedTensor, now_ms: int, train: bool = True) -> torch.Tensor:
        """``[B, F, dim]`` mean-pooled rows; with ``train`` ids are admitted and rows refreshed."""
        self._leaves = []
        pooled: dict[str, torch.Tensor] = {}
        for store, features in self._stores:
            fused = self._store_forward(store, features, sparse, now_ms, train)
            if features == self.features:  # one store serves every feature: no copy
                return fused.transpose(0, 1)
            pooled.update(zip(features, fused.unbind(0)))
        return torch.stack([pooled[f] for f in self.features], dim=1)

    def _store_forward(self, store: TableStore, features: list[str], sparse: KeyedJaggedTensor,
                       now_ms: int, train: bool) -> torch.Tensor:
        """``[len(features), B, dim]``: one dedup, lookup and pooling for all ``features``.

        Features sharing a table share its tag, so an id seen by both is one
        row, looked up once, its sightings counted together.
        """
        batch = sparse.stride()
        keys = sparse.keys()
        position = {k: i for i, k in enumerate(keys)}
        lengths = sparse.lengths().to(torch.int64).view(len(keys), batch)
        if features == keys:
            ids, lengths = sparse.values(), lengths.reshape(-1)
        else:
            at = [position[f] for f in features]
            ends = torch.cumsum(lengths.sum(dim=1), 0).tolist()
            ids = torch.cat([sparse.values()[(ends[i - 1] if i else 0): ends[i]] for i in at])
            lengths = lengths[at].reshape(-1)
        per_feature = lengths.view(len(features), batch).sum(dim=1)
        tags = torch.repeat_interleave(torch.tensor(
            [self.tables[self.table_of[f]].tag for f in features], dtype=torch.int64),
            per_feature)
        pair_ids, pair_tags, inverse, counts = native.unique_pairs(ids, tags)
        rows = store.lookup(pair_tags, pair_ids, counts, now_ms=now_ms, train=train)
        leaf = store.read(rows)
        if train:
            leaf.requires_grad_(True)
            self._leaves.append((store, rows, leaf))
        values = native.gather_rows(self._prune_store(store, pair_tags, leaf), inverse)
        if values.shape[0] == lengths.numel() and bool((lengths == 1).all()):
            # One id per example and feature (the common schema): the mean is the row.
            return values.view(len(features), batch, leaf.shape[1])
        segment = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        sums = torch.zeros((lengths.numel(), leaf.shape[1])).index_add(0, segment, values)
        means = sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype)
        return means.view(len(features), batch, leaf.shape[1])

    def _prune_store(self, store: TableStore, tags: torch.Tensor, rows: torch.Tensor
                     ) -> torch.Tensor:
        which = [self._pruned_index.get(name, -1) for name in store.names]
        if max(which) < 0:
            return rows
        index = torch.tensor(which)[tags]
        margin = rows.abs().sum(dim=1) - self.thresholds[index.clamp(min=0)]
        return _masked(rows, margin, on=index >= 0)

    def step(self) -> None:
        """Apply the gradients of the last ``forward`` to the rows it read."""
        for store, rows, leaf in self._leaves:
            grad = leaf.grad
            if grad is None and store.collective:
                # A collective update must run on every rank, ids or not.
                grad = torch.zeros_like(leaf)
            if grad is not None:
                # Row-wise Adagrad is invariant to the gradient's scale, so
                # the mean-reduced loss needs no per-batch-size correction.
                store.update(rows, grad)
        self._leaves = []

    def discard(self) -> None:
        """Forget the last ``forward``'s rows without updating them (a skipped step)."""
        self._leaves = []

    def _prune_below(self, table: str) -> float | None:
        if table not in self._pruned_index:
            return None
        t = float(self.thresholds.detach()[self._pruned_index[table]])
        return t if t > 0 else None

    def expire(self, now_ms: int) -> int:
        """One bounded slice of each table's expiry/pruning sweep; returns rows freed."""
        return expire_tables(self.tables, now_ms, self._prune_below)

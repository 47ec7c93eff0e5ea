"""DynamicEmbeddingCollection: KeyedJaggedTensor of raw ids -> pooled embeddings.

The dynamic-table counterpart of TorchRec's EmbeddingBagCollection: one
:class:`EmbeddingTable` per feature, mean pooling, and a sparse optimizer step
that touches only the rows a batch used. Autograd sees one small leaf tensor
per table group (the batch's unique rows), never the whole table, so a step
costs O(ids in the batch), whatever the table size.

Tables that are views of one :class:`~streamrec.model.tables.group.TableGroup` (what
``make_tables`` builds for features sharing a config) are handled together:
one dedup, one lookup, one pooling and one update for all of them, as fbgemm's
TableBatchedEmbeddingBags does for static tables. Other tables (sharded,
distributed) go feature by feature.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from streamrec import native
from streamrec.model.ctr import pool_features
from streamrec.model.tables.base import EmbeddingTable, expire_tables
from streamrec.model.tables.group import TableGroup, group_views
from streamrec.model.tables.sort import unique
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


# A delta's dense tensors named "<prefix><feature>" carry that feature's OptEmbed
# threshold, so that serving applies the same mask as training.
PRUNE_THRESHOLD_PREFIX = "prune_threshold/"


def split_thresholds(dense: Mapping[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(model weights, thresholds by feature)`` of a delta's dense tensors."""
    n = len(PRUNE_THRESHOLD_PREFIX)
    thresholds = {k[n:]: v for k, v in dense.items() if k.startswith(PRUNE_THRESHOLD_PREFIX)}
    weights = {k: v for k, v in dense.items() if not k.startswith(PRUNE_THRESHOLD_PREFIX)}
    return weights, thresholds

class DynamicEmbeddingCollection:
    """Pools each feature's rows and applies row-wise Adagrad after backward.

    Usage per step: ``pooled = ec.forward(kjt, now_ms)`` → loss → ``backward()``
    → ``ec.step()``. Not thread-safe; the trainer serialises steps.
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable],
                 prune_alpha: Mapping[str, float] | None = None) -> None:
        self.tables = dict(tables)
        self.features = list(self.tables)
        self._leaves: list[tuple[EmbeddingTable | TableGroup, torch.Tensor, torch.Tensor]] = []
        # OptEmbed (Lyu et al., CIKM 2022): one learnable threshold per pruned
        # feature on its rows' L1 norm, starting at 0 (nothing pruned).
        self.prune_alpha = {f: a for f, a in (prune_alpha or {}).items() if a > 0}
        self._pruned_index = {f: i for i, f in enumerate(self.prune_alpha)}
        self.thresholds = torch.nn.Parameter(torch.zeros(len(self.prune_alpha)))
        # Features by the group that holds their tables; the rest go one by one.
        self._groups, self._single = group_views(self.tables)

    def threshold_state(self) -> dict[str, torch.Tensor]:
        """The pruned features' thresholds as named dense tensors, for deltas."""
        values = self.thresholds.detach()
        return {PRUNE_THRESHOLD_PREFIX + f: values[i].clone() for f, i in self._pruned_index.items()}

    def set_thresholds(self, by_feature: Mapping[str, torch.Tensor]) -> None:
        """Load every pruned feature's threshold (one value each) from ``by_feature``."""
        with torch.no_grad():
            for f, i in self._pruned_index.items():
                self.thresholds[i] = by_feature[f].reshape(())

    def parameters(self) -> list[torch.nn.Parameter]:
        """Dense parameters to train with the model's optimizer (the thresholds)."""
        return [self.thresholds] if self.prune_alpha else []

    def regularizer(self) -> torch.Tensor:
        """OptEmbed's sparsity term: sum over pruned features of alpha * exp(-t)."""
        if not self.prune_alpha:
            return torch.zeros(())
        alpha = torch.tensor(list(self.prune_alpha.values()))
        return (alpha * torch.exp(-self.thresholds)).sum()

    def _prune(self, feature: str, rows: torch.Tensor) -> torch.Tensor:
        t = self.thresholds[self._pruned_index[feature]]
        return _masked(rows, rows.abs().sum(dim=1) - t)

    def forward(self, sparse: KeyedJaggedTensor, now_ms: int, train: bool = True) -> torch.Tensor:
        """``[B, F, dim]`` mean-pooled rows; with ``train`` ids are admitted and rows refreshed."""
        self._leaves = []
        pooled: dict[str, torch.Tensor] = {}
        for group, features in self._groups:
            fused = self._group_forward(group, features, sparse, now_ms, train)
            if features == self.features:  # one group holds every table: no copy
                return fused.transpose(0, 1)
            pooled.update(zip(features, fused.unbind(0)))
        if self._single:
            def lookup(feature: str, ids: torch.Tensor) -> torch.Tensor:
                table = self.tables[feature]
                unique_ids, inverse, counts = unique(ids)
                rows = table.lookup(unique_ids, counts, now_ms=now_ms, train=train)
                leaf = table.read(rows)
                if train:
                    leaf.requires_grad_(True)
                    self._leaves.append((table, rows, leaf))
                values = self._prune(feature, leaf) if feature in self._pruned_index else leaf
                return values[inverse]

            single = pool_features(sparse, self._single, lookup)
            pooled.update(zip(self._single, single.unbind(1)))
        return torch.stack([pooled[f] for f in self.features], dim=1)

    def _group_forward(self, group: TableGroup, features: list[str], sparse: KeyedJaggedTensor,
                       now_ms: int, train: bool) -> torch.Tensor:
        """``[len(features), B, dim]``: one dedup, lookup and pooling for all ``features``."""
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
        tags = torch.repeat_interleave(
            torch.tensor([group.tag_of[f] for f in features], dtype=torch.int64), per_feature)
        pair_ids, pair_tags, inverse, counts = native.unique_pairs(ids, tags)
        rows = group.lookup(pair_tags, pair_ids, counts, now_ms=now_ms, train=train)
        leaf = group.read(rows)
        if train:
            leaf.requires_grad_(True)
            self._leaves.append((group, rows, leaf))
        values = native.gather_rows(self._prune_group(group, pair_tags, leaf), inverse)
        if values.shape[0] == lengths.numel() and bool((lengths == 1).all()):
            # One id per example and feature (the common schema): the mean is the row.
            return values.view(len(features), batch, leaf.shape[1])
        segment = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        sums = torch.zeros((lengths.numel(), leaf.shape[1])).index_add(0, segment, values)
        means = sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype)
        return means.view(len(features), batch, leaf.shape[1])

    def _prune_group(self, group: TableGroup, tags: torch.Tensor, rows: torch.Tensor
                     ) -> torch.Tensor:
        which = [self._pruned_index.get(name, -1) for name in group.names]
        if max(which) < 0:
            return rows
        index = torch.tensor(which)[tags]
        margin = rows.abs().sum(dim=1) - self.thresholds[index.clamp(min=0)]
        return _masked(rows, margin, on=index >= 0)

    def step(self) -> None:
        """Apply the gradients of the last ``forward`` to the rows it read."""
        for table, rows, leaf in self._leaves:
            grad = leaf.grad
            if grad is None and getattr(table, "collective", False):
                # A collective update must run on every rank, ids or not.
                grad = torch.zeros_like(leaf)
            if grad is not None:
                # Row-wise Adagrad is invariant to the gradient's scale, so
                # the mean-reduced loss needs no per-batch-size correction.
                table.update(rows, grad)
        self._leaves = []

    def discard(self) -> None:
        """Forget the last ``forward``'s rows without updating them (a skipped step)."""
        self._leaves = []

    def _prune_below(self, feature: str) -> float | None:
        if feature not in self._pruned_index:
            return None
        t = float(self.thresholds.detach()[self._pruned_index[feature]])
        return t if t > 0 else None

    def expire(self, now_ms: int) -> int:
        """One bounded slice of each table's expiry/pruning sweep; returns rows freed."""
        return expire_tables(self.tables, now_ms, self._prune_below)

"""DynamicEmbeddingCollection: KeyedJaggedTensor of raw ids -> pooled embeddings.

The dynamic-table counterpart of TorchRec's EmbeddingBagCollection: one
:class:`EmbeddingTable` per feature, mean pooling, and a sparse optimizer step
that touches only the rows a batch used. Autograd sees one small leaf tensor
per feature (the batch's unique rows), never the whole table, so a step
costs O(ids in the batch), whatever the table size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.model import pool_features
from trainer.tables.base import EmbeddingTable

__all__ = ["DynamicEmbeddingCollection"]


class DynamicEmbeddingCollection:
    """Pools each feature's rows and applies row-wise Adagrad after backward.

    Usage per step: ``pooled = ec.forward(kjt, now_ms)`` → loss → ``backward()``
    → ``ec.step()``. Not thread-safe; the trainer serialises steps.
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable],
                 prune_alpha: Mapping[str, float] | None = None) -> None:
        self.tables = dict(tables)
        self.features = list(self.tables)
        self._leaves: list[tuple[EmbeddingTable, torch.Tensor, torch.Tensor]] = []
        # OptEmbed (Lyu et al., CIKM 2022): one learnable threshold per pruned
        # feature on its rows' L1 norm, starting at 0 (nothing pruned).
        self.prune_alpha = {f: a for f, a in (prune_alpha or {}).items() if a > 0}
        self._pruned_index = {f: i for i, f in enumerate(self.prune_alpha)}
        self.thresholds = torch.nn.Parameter(torch.zeros(len(self.prune_alpha)))

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
        margin = rows.abs().sum(dim=1) - t
        # Heaviside step forward, identity gradient backward (straight-through
        # estimator, OptEmbed eq. 5): rows under t read as zero, yet both the
        # rows and the threshold receive gradients.
        mask = (margin > 0).to(rows.dtype) + margin - margin.detach()
        return rows * mask.unsqueeze(1)

    def forward(self, sparse: KeyedJaggedTensor, now_ms: int, train: bool = True) -> torch.Tensor:
        """``[B, F, dim]`` mean-pooled rows; with ``train`` ids are admitted and rows refreshed."""
        self._leaves = []

        def lookup(feature: str, ids: torch.Tensor) -> torch.Tensor:
            table = self.tables[feature]
            unique, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
            rows = table.lookup(unique, counts, now_ms=now_ms, train=train)
            leaf = table.read(rows)
            if train:
                leaf.requires_grad_(True)
                self._leaves.append((table, rows, leaf))
            values = self._prune(feature, leaf) if feature in self._pruned_index else leaf
            return values[inverse]

        return pool_features(sparse, self.features, lookup)

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

    def expire(self, now_ms: int) -> int:
        """One bounded slice of each table's expiry/pruning sweep; returns rows freed."""
        freed = 0
        for feature, table in self.tables.items():
            prune_below = None
            if feature in self._pruned_index:
                t = float(self.thresholds.detach()[self._pruned_index[feature]])
                prune_below = t if t > 0 else None
            freed += table.expire(now_ms, prune_below=prune_below)
        return freed

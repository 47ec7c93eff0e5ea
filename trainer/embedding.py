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

    def __init__(self, tables: Mapping[str, EmbeddingTable]) -> None:
        self.tables = dict(tables)
        self.features = list(self.tables)
        self._leaves: list[tuple[EmbeddingTable, torch.Tensor, torch.Tensor]] = []

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
            return leaf[inverse]

        return pool_features(sparse, self.features, lookup)

    def step(self) -> None:
        """Apply the gradients of the last ``forward`` to the rows it read."""
        for table, rows, leaf in self._leaves:
            if leaf.grad is not None:
                # Row-wise Adagrad is invariant to the gradient's scale, so
                # the mean-reduced loss needs no per-batch-size correction.
                table.update(rows, leaf.grad)
        self._leaves = []

    def expire(self, now_ms: int) -> int:
        """One bounded slice of each table's expiry sweep; returns rows evicted."""
        return sum(t.expire(now_ms) for t in self.tables.values())

"""Batching events into tensors: a KeyedJaggedTensor of raw ids plus dense tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ingest.event import Event, FeatureValue
from ingest.ids import to_id

__all__ = ["Batch", "Batcher", "dense_value"]


@dataclass
class Batch:
    """A training (or scoring) batch of B examples.

    ``sparse`` has one key per sparse feature (the model's order) with raw
    int64 ids, a variable number per example. ``dense`` is ``[B, n_dense]``
    float32; ``labels`` and ``sample_rates`` are ``[B]`` float32;
    ``timestamps_ms`` is ``[B]`` int64 event time.
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    sample_rates: torch.Tensor
    timestamps_ms: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def dense_value(values: Sequence[FeatureValue]) -> float:
    """The model input for one numeric feature: signed log1p of its first value.

    Counts and prices span orders of magnitude; log1p keeps them in a range
    an MLP trains on without per-feature normalisation statistics.
    """
    if not values:
        return 0.0
    v = values[0]
    if isinstance(v, str):
        return 0.0
    x = float(v)
    if not math.isfinite(x):
        return 0.0
    return math.copysign(math.log1p(abs(x)), x)


class Batcher:
    """Turns decoded events into a :class:`Batch` for a fixed feature schema.

    ``user_id`` and ``item_id`` as sparse feature names read the event's ids;
    any other name reads ``event.features[name]`` (absent = no ids).
    """

    def __init__(self, sparse_features: Sequence[str], dense_features: Sequence[str]) -> None:
        self.sparse_features = list(sparse_features)
        self.dense_features = list(dense_features)

    def ids_of(self, feature: str, user_id: int, item_id: int,
               features: dict[str, tuple[FeatureValue, ...]] | None) -> list[int]:
        if feature == "user_id":
            return [user_id]
        if feature == "item_id":
            return [item_id]
        values = (features or {}).get(feature, ())
        return [to_id(v) for v in values]

    def build(self, events: Sequence[Event]) -> Batch:
        """Batch ``events`` (examples; a missing label counts as 0)."""
        rows = [(e.user_id, e.item_id, e.features) for e in events]
        batch = self.build_rows(rows)
        batch.labels = torch.tensor([e.label or 0.0 for e in events], dtype=torch.float32)
        batch.sample_rates = torch.tensor([e.sample_rate for e in events], dtype=torch.float32)
        batch.timestamps_ms = torch.tensor([e.timestamp_ms for e in events], dtype=torch.int64)
        return batch

    def build_rows(
        self, rows: Sequence[tuple[int, int, dict[str, tuple[FeatureValue, ...]] | None]]
    ) -> Batch:
        """Batch ``(user_id, item_id, features)`` rows, e.g. serving candidates.

        Labels are zeros, sample rates ones and timestamps zeros.
        """
        values: list[int] = []
        lengths: list[int] = []
        for feature in self.sparse_features:
            for user_id, item_id, features in rows:
                ids = self.ids_of(feature, user_id, item_id, features)
                values.extend(ids)
                lengths.append(len(ids))
        n = len(rows)
        sparse = KeyedJaggedTensor(
            keys=self.sparse_features,
            values=torch.tensor(values, dtype=torch.int64),
            lengths=torch.tensor(lengths, dtype=torch.int32),
            stride=n,
        )
        if self.dense_features:
            dense = torch.tensor(
                [[dense_value((f or {}).get(name, ())) for name in self.dense_features]
                 for _, _, f in rows],
                dtype=torch.float32,
            ).reshape(n, len(self.dense_features))
        else:
            dense = torch.zeros((n, 0), dtype=torch.float32)
        return Batch(
            sparse=sparse,
            dense=dense,
            labels=torch.zeros(n, dtype=torch.float32),
            sample_rates=torch.ones(n, dtype=torch.float32),
            timestamps_ms=torch.zeros(n, dtype=torch.int64),
        )

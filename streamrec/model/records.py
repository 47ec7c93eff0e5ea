"""Typed records of a parameter delta: rows upserted, ids evicted, dense parameters.

Tables produce them (:meth:`EmbeddingTable.collect_delta`), the codec
(:mod:`streamrec.model.delta`) carries them over the wire, replicas apply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["DenseParameters", "EvictedIds", "TableDelta", "UpsertedRows"]


def _no_ids() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class UpsertedRows:
    """Rows to insert or overwrite: ``values[i]`` is the row of ``ids[i]``.

    ``ids``: ``[n]`` int64; ``values``: ``[n, dim]`` float32 (row values).
    """

    ids: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.dim() != 1 or self.values.dim() != 2 \
                or self.values.shape[0] != self.ids.shape[0]:
            raise ValueError(f"upserted rows: {tuple(self.ids.shape)} ids for values of shape "
                             f"{tuple(self.values.shape)}; expected [n] and [n, dim]")

    @staticmethod
    def empty(dim: int) -> UpsertedRows:
        return UpsertedRows(_no_ids(), torch.zeros((0, dim)))

    def __len__(self) -> int:
        return int(self.ids.numel())


@dataclass(frozen=True)
class EvictedIds:
    """Ids whose rows were removed: a replica removes them too (``[n]`` int64)."""

    ids: torch.Tensor = field(default_factory=_no_ids)

    def __post_init__(self) -> None:
        if self.ids.dim() != 1:
            raise ValueError(f"evicted ids: shape {tuple(self.ids.shape)}, expected [n]")

    def __len__(self) -> int:
        return int(self.ids.numel())


@dataclass(frozen=True)
class TableDelta:
    """One table's part of a delta: the rows upserted and the ids evicted.

    A replica applies the evicted ids first, then the rows, so an id evicted
    and re-admitted within one delta ends up present.
    """

    table: str
    dim: int
    upserted: UpsertedRows
    evicted: EvictedIds = field(default_factory=EvictedIds)

    def __post_init__(self) -> None:
        if self.upserted.values.shape[1] != self.dim:
            raise ValueError(f"table {self.table!r}: rows of shape "
                             f"{tuple(self.upserted.values.shape)}, expected [*, {self.dim}]")

    def is_empty(self) -> bool:
        return not len(self.upserted) and not len(self.evicted)


@dataclass(frozen=True)
class DenseParameters:
    """The dense model's weights by name, and the OptEmbed thresholds by feature.

    Serving applies the thresholds' mask as training does. Both empty: a
    delta that leaves the dense parameters as they are.
    """

    weights: Mapping[str, torch.Tensor] = field(default_factory=dict)
    prune_thresholds: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.weights and not self.prune_thresholds

    def equals(self, other: DenseParameters) -> bool:
        """Whether both hold the same names with equal values."""
        return all(
            mine.keys() == theirs.keys()
            and all(torch.equal(v, theirs[k]) for k, v in mine.items())
            for mine, theirs in ((self.weights, other.weights),
                                 (self.prune_thresholds, other.prune_thresholds)))

"""In-batch adaptation: what a per-event learner would have learned from the
batch's earlier events, added to each example's logit (``model.in_batch_terms``).

The formula and why: docs/design.md, "In-batch adaptation".
"""

from __future__ import annotations

import torch
from streamrec.ingest.batch import KeyedJaggedTensor

from streamrec.model.tables.sort import stable_argsort
from streamrec.model.wide import TermColumns, cross_keys

__all__ = ["in_batch_correction"]

class _Runs:
    """A term's entries sorted by key (stable: batch order within a key), in runs of one key."""

    def __init__(self, example: torch.Tensor, key: torch.Tensor) -> None:
        self.example, self.key = example, key
        self.order = stable_argsort(key)
        sorted_key = key.index_select(0, self.order)
        self.start = torch.ones_like(sorted_key, dtype=torch.bool)
        self.start[1:] = sorted_key[1:] != sorted_key[:-1]
        self.run = torch.cumsum(self.start.to(torch.int64), 0) - 1
        self.groups = int(self.run[-1]) + 1 if key.numel() else 0

    def exclusive_prefix(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, C]``: per entry, the sum of ``values`` ``[N, C]`` over the earlier
        entries with its key."""
        # Float64 sums: one running sum over all runs, so that a run's figures
        # do not pick up rounding from the (later) runs sorted before it.
        ordered = values.index_select(0, self.order).to(torch.float64)
        csum = torch.cumsum(ordered, 0) - ordered
        out = torch.empty_like(ordered)
        out.index_copy_(0, self.order, csum - csum[self.start].index_select(0, self.run))
        return out.to(values.dtype)

    def same_grouping(self, other: _Runs) -> bool:
        """Whether both terms split the same entries into the same groups."""
        if self.groups != other.groups or not torch.equal(self.example, other.example):
            return False
        return torch.unique(cross_keys(self.key, other.key)).numel() == self.groups


def in_batch_correction(sparse: KeyedJaggedTensor, terms: list[list[str]], labels: torch.Tensor,
                        logits: torch.Tensor, weight: torch.Tensor, strength: float,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` logit corrections (see the module docstring); differentiable in ``weight`` [K].

    ``weights`` ``[B]`` are the examples' loss weights (1 / sample rate under
    negative down-sampling; default 1): sums and counts are weighted, so the
    residuals of a calibrated model still sum to zero on a down-sampled
    stream, and the correction does not pull the model off calibration.
    """
    if weights is None:
        weights = torch.ones_like(labels)
    batch = sparse.stride()
    base = logits.detach()
    total = torch.zeros(batch)
    seen: list[_Runs] = []
    columns = TermColumns(sparse)
    for k, term in enumerate(terms):
        runs = _Runs(*columns.term_keys(term))
        if runs.groups == 0 or any(runs.same_grouping(earlier) for earlier in seen):
            continue
        seen.append(runs)
        residual = weights * (labels - torch.sigmoid(base + total.detach()))
        before = runs.exclusive_prefix(
            torch.stack([weights, residual], dim=1).index_select(0, runs.example))
        per_entry = before[:, 1] / (before[:, 0] + strength)
        keys_per_example = torch.bincount(runs.example, minlength=batch).clamp(min=1)
        mean = torch.zeros(batch).index_add_(0, runs.example, per_entry) / keys_per_example
        total = total + weight[k] * mean
    return total

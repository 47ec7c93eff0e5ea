"""In-batch adaptation: what a per-event learner would have learned from the
batch's earlier events, added to each example's logit.

Why: real logs come in bursts (a user rates dozens of items in one session),
so a whole burst often falls in one mini-batch and is scored by the same
model, while a per-event learner (Vowpal Wabbit, River) has adapted after the
first few events. The history features recover per-id click rates; this
recovers the per-event *residual* learning, which also accounts for the rest
of the model (a user who likes what everyone likes has no residual to learn).

Each term is a feature or a cross of features (``"user_id"``,
``"user_id*genres"``: one key per combination of their values, list features
contributing each of their values). For term ``k`` and example ``i``, over
the earlier examples ``j < i`` of the batch sharing a key with ``i``::

    c_k(i) = w_k * sum_j r_j / (n + s)        r_j = y_j - sigmoid(logit_j + c_<k(j))

(averaged over ``i``'s keys), so each term fits what the terms before it left
(stagewise, as boosting does); ``n`` is the number of those earlier examples,
``s`` a smoothing strength and ``w_k`` a learned weight. Only earlier labels
enter an example's score: test-then-train stays honest. The residuals are
taken from the batch-start model (no gradient flows through them); ``w`` is
learned by the dense optimizer. Serving has no labels in a request: there the
correction is zero, and the batch's outcomes reach serving through the rows
and history counts the step updates.

A cross term whose keys group the batch's examples exactly as an earlier
term's did (``user_id*gender`` when gender is constant per user) is skipped
for that batch: it would only add the same correction again.
"""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.tables.sort import stable_argsort

__all__ = ["term_keys", "in_batch_correction"]

_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit multiplier (int64 arithmetic wraps)


def term_keys(sparse: KeyedJaggedTensor, term: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(example [E], key [E])``: one entry per combination of the term's
    features' values per example, in batch order (an example lacking one of
    the features has none)."""
    batch = sparse.stride()
    example = torch.arange(batch)
    key = torch.zeros(batch, dtype=torch.int64)
    for feature in term:
        jt = sparse[feature]
        lengths = jt.lengths().to(torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths
        repeat = lengths.index_select(0, example)
        first = torch.cumsum(repeat, 0) - repeat
        example = torch.repeat_interleave(example, repeat)
        within = torch.arange(example.numel()) - torch.repeat_interleave(first, repeat)
        values = jt.values().index_select(0, starts.index_select(0, example) + within)
        key = torch.repeat_interleave(key, repeat) * _MIX + values
    return example, key


def _exclusive_prefix(key: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[N, C]``: per element, the sum of ``values`` ``[N, C]`` over the earlier
    elements with its key (a stable sort by key, then sums within each run)."""
    order = stable_argsort(key)
    # Float64 sums: one running sum over all runs, so that a run's figures
    # do not pick up rounding from the (later) runs sorted before it.
    sorted_key = key.index_select(0, order)
    sorted_values = values.index_select(0, order).to(torch.float64)
    run_start = torch.ones_like(sorted_key, dtype=torch.bool)
    run_start[1:] = sorted_key[1:] != sorted_key[:-1]
    run = torch.cumsum(run_start.to(torch.int64), 0) - 1
    csum = torch.cumsum(sorted_values, 0) - sorted_values
    out = torch.empty_like(sorted_values)
    out.index_copy_(0, order, csum - csum[run_start].index_select(0, run))
    return out.to(values.dtype)


def _same_grouping(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
                   ) -> bool:
    """Whether two terms' entries are the same examples split into the same groups."""
    (ex_a, key_a), (ex_b, key_b) = a, b
    if ex_a.numel() != ex_b.numel() or not bool(torch.equal(ex_a, ex_b)):
        return False
    n_a = torch.unique(key_a).numel()
    return n_a == torch.unique(key_b).numel() == torch.unique(key_a * _MIX + key_b).numel()


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
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k, term in enumerate(terms):
        entries = term_keys(sparse, term)
        if any(_same_grouping(entries, earlier) for earlier in seen):
            continue
        seen.append(entries)
        example, key = entries
        if example.numel() == 0:
            continue
        residual = weights * (labels - torch.sigmoid(base + total.detach()))
        before = _exclusive_prefix(key, torch.stack([weights, residual], dim=1).index_select(
            0, example))
        per_entry = before[:, 1] / (before[:, 0] + strength)
        keys_per_example = torch.bincount(example, minlength=batch).clamp(min=1)
        mean = torch.zeros(batch).index_add_(0, example, per_entry) / keys_per_example
        total = total + weight[k] * mean
    return total

"""Sorting primitives of the training step, on numpy's vectorised sort.

Every step deduplicates its ids (one sort of ~10k int64 keys per table group)
and orders history events by id. ``torch.sort`` on CPU costs ~37 ns per int64
element on this class of machine, numpy's ``argsort`` (x86-simd-sort, AVX-512
or AVX2) ~8 ns: with the sort ~15% of a step, that is worth a module. Inputs
and outputs are CPU tensors; numpy views share their memory, so nothing but
the results is copied.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["exclusive_sums", "unique", "unique_np", "stable_argsort"]

# unique() counts instead of sorting when the keys span at most this many
# values per key: one pass over a span-sized mask beats an n log n sort.
_DENSE_SPAN = 8


def unique(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)`` for 1-D int64.

    Returns ``(uniques ascending, inverse, counts)``: ``uniques[inverse] == keys``.
    """
    k = keys.contiguous().numpy()
    if k.shape[0] == 0:
        empty = torch.empty(0, dtype=keys.dtype)
        return empty, empty.clone(), empty.clone()
    uniques, inverse, counts = unique_np(k)
    return torch.from_numpy(uniques), torch.from_numpy(inverse), torch.from_numpy(counts)


def unique_np(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`unique` on a non-empty 1-D int64 array (the arrays, no tensors)."""
    n = k.shape[0]
    low = int(k.min())
    span = int(k.max()) - low + 1
    if span <= _DENSE_SPAN * n:
        # Keys in a narrow range (ranks, small ids): mark and count, no sort.
        shifted = k - low
        seen = np.zeros(span, dtype=bool)
        seen[shifted] = True
        rank = np.cumsum(seen) - 1
        inverse = rank[shifted]
        uniques = np.flatnonzero(seen) + low
        counts = np.bincount(inverse, minlength=uniques.shape[0])
        return uniques.astype(k.dtype, copy=False), inverse, counts
    order = np.argsort(k)  # not stable, which dedup does not need
    ordered = k[order]
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=start[1:])
    rank = np.cumsum(start) - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = rank
    starts = np.flatnonzero(start)
    counts = np.diff(starts, append=n)
    return ordered[starts], inverse, counts


def stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Indices that sort 1-D int64 ``keys``, equal keys in their original order.

    When the key range allows, ``(key - min) * n + position`` makes every key
    distinct, so the fast unstable sort gives the stable order.
    """
    k = keys.contiguous().numpy()
    n = k.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    low, high = int(k.min()), int(k.max())
    if 0 <= low and high < 2**16:
        # Small keys (ranks of a batch's unique ids): numpy's stable sort of
        # 16-bit integers is a radix sort, O(n).
        return torch.from_numpy(np.argsort(k.astype(np.uint16), kind="stable"))
    if (high - low + 1) * n < 2**62:
        distinct = (k - low) * n + np.arange(n, dtype=np.int64)
        return torch.from_numpy(np.argsort(distinct))
    return torch.from_numpy(np.argsort(k, kind="stable"))


def exclusive_sums(key: torch.Tensor, adds: torch.Tensor) -> torch.Tensor:
    """``[N, 2]``: per element, the sum of ``adds`` ``[N, 2]`` over the earlier elements with its key.

    Sort stably by key (keeping batch order within a key), cumulative sums
    within each run, minus the element itself.
    """
    order = stable_argsort(key)
    sorted_key, prefix = key.index_select(0, order), adds.index_select(0, order)
    run_start = torch.ones_like(sorted_key, dtype=torch.bool)
    run_start[1:] = sorted_key[1:] != sorted_key[:-1]
    csum = torch.cumsum(prefix, 0) - prefix
    base = csum[run_start][torch.cumsum(run_start.to(torch.int64), 0) - 1]
    exclusive = torch.zeros_like(prefix)
    exclusive.index_copy_(0, order, csum - base)
    return exclusive

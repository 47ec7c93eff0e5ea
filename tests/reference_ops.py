"""Reference implementations of streamrec.native's operators, in torch, for the tests.

Each function takes and returns what its namesake in :mod:`streamrec.native` does.
:func:`reference_ops` runs the product code on these instead of the operators;
:func:`python_paths` makes the batcher and the Kafka reader take their general
Python paths (as they do for batches the compiled ones decline).
"""

from __future__ import annotations

import math

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch

from streamrec import native

_LOW = 0xFFFFFFFF
_TAG_MULT = 0x2545F4914F6CDD1D  # mixes the tag into the key of a tagged id index


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64 constants (Steele et al. 2014), as signed int64.
_GOLDEN, _C1, _C2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                          0x94D049BB133111EB))


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    # Logical right shifts on int64: arithmetic shift, then mask the sign bits away.
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _C1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _C2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def fm_head(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor
            ) -> torch.Tensor:
    """First-order terms + FM interactions + a linear layer over the factors, layer-wise."""
    factors = rows[..., :-1]  # [F, B, d]
    if extra is not None:
        factors = torch.cat([factors, extra.unsqueeze(0)], dim=0)
    first_order = rows[..., -1].sum(dim=0)
    sums = factors.sum(dim=0)
    interactions = 0.5 * (sums.square().sum(dim=1) - factors.square().sum(dim=(0, 2)))
    linear = (factors * weight.unsqueeze(1)).sum(dim=(0, 2))
    return first_order + interactions + linear


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return table.index_select(0, index)


def _exclusive_prefix(key: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, 2]``: per element, (count, sum of y) over the earlier elements with its key."""
    order = torch.sort(key, stable=True).indices
    sorted_key, sorted_y = key.index_select(0, order), y.index_select(0, order)
    run_start = torch.ones_like(sorted_key, dtype=torch.bool)
    run_start[1:] = sorted_key[1:] != sorted_key[:-1]
    prefix = torch.stack([torch.ones_like(sorted_y), sorted_y], dim=1)
    csum = torch.cumsum(prefix, 0) - prefix
    base = csum[run_start][torch.cumsum(run_start.to(torch.int64), 0) - 1]
    exclusive = torch.zeros_like(prefix)
    exclusive.index_copy_(0, order, csum - base)
    return exclusive


def history_prefix(stored: torch.Tensor, inverse: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    before = stored.index_select(0, inverse) + _exclusive_prefix(inverse, y)
    totals = torch.zeros((stored.shape[0], 2)).index_add_(
        0, inverse, torch.stack([torch.ones_like(y), y], dim=1))
    return before, totals


def wide_learn(state: torch.Tensor, offsets: torch.Tensor, slots: torch.Tensor,
               learnable: torch.Tensor, base: torch.Tensor, outcomes: torch.Tensor,
               lr: float, acc0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One example at a time, in float64."""
    new = state.to(torch.float64).clone()
    sums = torch.zeros(base.numel(), dtype=torch.float64)
    for i in range(base.numel()):
        rows = slots[int(offsets[i]):int(offsets[i + 1])]
        sums[i] = new[rows, 0].sum()
        n, c = (float(v) for v in outcomes[i])
        if n == 0 and c == 0:
            continue
        g = n * float(torch.sigmoid(base[i].double() + sums[i])) - c
        for u in rows.tolist():
            if learnable[u]:
                new[u, 1] += g * g
                new[u, 0] -= lr * g / len(rows) / math.sqrt(acc0 + float(new[u, 1]))
    return sums.float(), new.float()


def unique_pairs(ids: torch.Tensor, tags: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """By sorting, then put in order of first occurrence."""
    n = ids.numel()
    if n == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone(), empty.clone(), empty.clone()
    pairs, inverse, counts = torch.unique(torch.stack([ids, tags], dim=1), dim=0,
                                          return_inverse=True, return_counts=True)
    first = torch.full((pairs.shape[0],), n, dtype=torch.int64).scatter_reduce_(
        0, inverse, torch.arange(n), "amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return pairs[order, 0], pairs[order, 1], rank[inverse], counts[order]


def index_hash(ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
    """Top 32 bits of splitmix64's mix of ``id + tag * _TAG_MULT`` (int64, ``0 .. 2^32-1``)."""
    key = ids if tags is None else ids + tags * _TAG_MULT
    return (_splitmix(key) >> 32) & _LOW


def _segment_of(h: torch.Tensor, directory: torch.Tensor, global_bits: int) -> torch.Tensor:
    return directory.index_select(0, h >> (32 - global_bits)) if global_bits else \
        torch.zeros_like(h)


def _home(h: torch.Tensor, seg: torch.Tensor, depth: torch.Tensor, cap_bits: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(first slot within the segment, the segment's slot mask) of each hash."""
    bits = cap_bits.index_select(0, seg)
    shift = 32 - depth.index_select(0, seg) - bits
    mask = (torch.ones_like(bits) << bits) - 1
    return (h >> shift) & mask, mask


def index_find(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
               cap_bits: torch.Tensor, global_bits: int, stride: int, row_ids: torch.Tensor,
               row_tags: torch.Tensor | None, ids: torch.Tensor, tags: torch.Tensor | None
               ) -> torch.Tensor:
    """A few torch passes over the still-unresolved ids."""
    h = index_hash(ids, tags)
    seg = _segment_of(h, directory, global_bits)
    pos, mask = _home(h, seg, depth, cap_bits)
    base = seg * stride
    found = torch.full_like(ids, -1)
    todo = torch.arange(ids.numel())
    while todo.numel():
        at = base + pos
        v = slots.index_select(0, at)
        row = (v & _LOW) - 1
        hit = (row >= 0) & (((v >> 32) & _LOW) == h)
        r = row.clamp(min=0)
        hit &= row_ids.index_select(0, r) == ids
        if tags is not None and row_tags is not None:
            hit &= row_tags.index_select(0, r).to(torch.int64) == tags
        done = torch.nonzero(hit).reshape(-1)
        found.index_copy_(0, todo.index_select(0, done), at.index_select(0, done))
        # A probe chain ends at an empty slot; deleted slots are walked over.
        go_on = torch.nonzero(~hit & (v != 0)).reshape(-1)
        todo, h, ids, base, pos, mask = (t.index_select(0, go_on)
                                         for t in (todo, h, ids, base, pos, mask))
        if tags is not None:
            tags = tags.index_select(0, go_on)
        pos = (pos + 1) & mask
    return found


def index_place(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
                cap_bits: torch.Tensor, global_bits: int, stride: int, used: torch.Tensor,
                live: torch.Tensor, values: torch.Tensor) -> None:
    """Passes over the unplaced values; where several reach one free slot, the first wins."""
    h = (values >> 32) & _LOW
    seg = _segment_of(h, directory, global_bits)
    pos, mask = _home(h, seg, depth, cap_bits)
    n_seg = used.numel()
    while values.numel():
        at = seg * stride + pos
        cur = slots.index_select(0, at)
        free = torch.nonzero((cur & _LOW) == 0).reshape(-1)
        cand = at.index_select(0, free)
        uniq, inverse = torch.unique(cand, return_inverse=True)
        first = torch.full((uniq.numel(),), free.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(free.numel()), "amin")
        won = free.index_select(0, first)
        slots.index_copy_(0, at.index_select(0, won), values.index_select(0, won))
        won_seg = seg.index_select(0, won)
        was_empty = cur.index_select(0, won) == 0
        used += torch.bincount(won_seg[was_empty], minlength=n_seg)
        live += torch.bincount(won_seg, minlength=n_seg)
        placed = torch.zeros(values.numel(), dtype=torch.bool)
        placed.index_fill_(0, won, True)
        rest = torch.nonzero(~placed).reshape(-1)
        values, seg, pos, mask = (t.index_select(0, rest) for t in (values, seg, pos, mask))
        pos = (pos + 1) & mask


def id_normal(ids: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """splitmix64 over (id, column + offset), 24 uniform bits each, Box-Muller."""
    cols = torch.arange(2 * dim, dtype=torch.int64)
    x = (ids.unsqueeze(1) * _GOLDEN + (cols + offset).unsqueeze(0)) * _GOLDEN
    bits = (_splitmix(x) >> 40) & ((1 << 24) - 1)  # 24 uniform bits
    u = (bits.to(torch.float64) + 0.5) / (1 << 24)
    u1, u2 = u[:, :dim], u[:, dim:]
    return ((-2 * u1.log()).sqrt() * torch.cos(2 * torch.pi * u2)).to(torch.float32)


OPS = {"fm_head": fm_head, "gather_rows": gather_rows, "history_prefix": history_prefix,
       "unique_pairs": unique_pairs, "index_hash": index_hash, "index_find": index_find,
       "index_place": index_place, "id_normal": id_normal, "wide_learn": wide_learn}


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Within the block, the product code calls the references instead of the operators."""
    with mock.patch.multiple(native, **OPS):
        yield


@contextlib.contextmanager
def python_paths() -> Iterator[None]:
    """Within the block, the compiled batcher and Kafka reader decline every batch."""
    with mock.patch.multiple(native, batch_columns=lambda *args: None,
                             kafka_records=lambda *args: None):
        yield

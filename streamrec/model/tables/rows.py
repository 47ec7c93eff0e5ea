"""Row-level pieces every dynamic table shares: initial values, the expiry sweep, counters."""

from __future__ import annotations

import torch

from streamrec import native

__all__ = ["SWEEP_ROWS", "TableStats", "id_normal", "sweep_window"]


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def id_normal(ids: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """``[len(ids), dim]`` standard normals that depend only on (seed, id, column).

    Initial rows are a pure function of the id, so the same id starts from the
    same values whatever the shard layout, process count or admission order —
    a 2-rank run can match a 1-rank run — and checkpoints need no RNG state.
    """
    offset = _signed((seed * 4 * dim) & ((1 << 64) - 1))  # wraps as int64 arithmetic does
    return native.id_normal(ids.reshape(-1), dim, offset)


def sweep_window(cursor: int, max_rows: int, end_all: int
                 ) -> tuple[list[tuple[int, int]], int]:
    """The next ``max_rows`` rows after ``cursor`` in ``0..end_all-1``, wrapping, as at most
    two ``(start, stop)`` ranges; and the new cursor.

    Row capacity grows between calls; a cursor that stopped at the old end and
    restarted only when it hit the new one would keep visiting just the newest
    rows of a growing table and never expire old ones. Ranges, not a tensor of
    row ids: the sweep reads slices of the row tensors, with no gather.
    """
    start = cursor % end_all
    n = min(max_rows, end_all)
    first = (start, min(end_all, start + n))
    ranges = [first] + ([(0, n - (first[1] - start))] if first[1] - start < n else [])
    return ranges, (start + n) % end_all


# Rows visited by the expiry sweep per training step.
SWEEP_ROWS = 1 << 16


class TableStats:
    """Cumulative counters a table keeps for metrics."""

    __slots__ = ("admitted", "filtered", "evicted", "pruned", "rejected_full")

    def __init__(self) -> None:
        self.admitted = 0  # ids given a row
        self.filtered = 0  # lookups of ids held back by the frequency filter
        self.evicted = 0  # rows expired
        self.pruned = 0  # rows freed by OptEmbed pruning
        self.rejected_full = 0  # admissions refused because max_rows was reached

"""A dynamic embedding table: collisionless, frequency-filtered, expirable.

Rows are keyed by raw int64 ids through :class:`IdIndex` (no hashing
collisions), an id gets a row only once :class:`FrequencyFilter` has seen it
``min_count`` times (Monolith §3.2.1), and rows unseen for ``ttl_s`` of event
time are evicted by an incremental sweep that visits a bounded slice of rows
per training step, so eviction never stalls a step (contrast TorchRec's MCH,
whose eviction pass stops training for seconds at each interval).

Each row holds ``dim`` float32 values and one row-wise Adagrad accumulator
(fbgemm's EXACT_ROWWISE_ADAGRAD semantics: one second-moment scalar per row).
An evicted row's values and accumulator are cleared and it is re-initialised
when handed to a new id, so a new id never inherits a previous owner's state.

Rows changed since the last :meth:`collect_delta` (touched rows) and ids
evicted since then (tombstones) form the delta parameter sync sends; reading
them copies only those rows.
"""

from __future__ import annotations

import abc

import torch

from streamrec.config import TableConfig
from trainer.tables.filter import FrequencyFilter
from trainer.tables.index import IdIndex

__all__ = ["DynamicEmbeddingTable", "RowStore", "TableStats", "id_normal", "sweep_window"]

_ADAGRAD_EPS = 1e-8


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


def id_normal(ids: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """``[len(ids), dim]`` standard normals that depend only on (seed, id, column).

    Initial rows are a pure function of the id, so the same id starts from the
    same values whatever the shard layout, process count or admission order —
    a 2-rank run can match a 1-rank run — and checkpoints need no RNG state.
    """
    cols = torch.arange(2 * dim, dtype=torch.int64)
    x = (ids.unsqueeze(1) * _GOLDEN + (cols + seed * 4 * dim).unsqueeze(0)) * _GOLDEN
    bits = (_splitmix(x) >> 40) & ((1 << 24) - 1)  # 24 uniform bits
    u = (bits.to(torch.float64) + 0.5) / (1 << 24)
    u1, u2 = u[:, :dim], u[:, dim:]
    return ((-2 * u1.log()).sqrt() * torch.cos(2 * torch.pi * u2)).to(torch.float32)
def sweep_window(cursor: int, max_rows: int, end_all: int) -> tuple[torch.Tensor, int]:
    """The next ``max_rows`` rows after ``cursor`` in ``0..end_all-1``, wrapping; and the new cursor.

    Row capacity grows between calls; a cursor that stopped at the old end and
    restarted only when it hit the new one would keep visiting just the newest
    rows of a growing table and never expire old ones.
    """
    start = cursor % end_all
    visit = (torch.arange(min(max_rows, end_all)) + start) % end_all
    return visit, (start + visit.numel()) % end_all


# Rows visited by the expiry sweep per training step.
_SWEEP_ROWS = 1 << 16


class TableStats:
    """Cumulative counters a table keeps for metrics."""

    __slots__ = ("admitted", "filtered", "evicted", "pruned", "rejected_full")

    def __init__(self) -> None:
        self.admitted = 0  # ids given a row
        self.filtered = 0  # lookups of ids held back by the frequency filter
        self.evicted = 0  # rows expired
        self.pruned = 0  # rows freed by OptEmbed pruning
        self.rejected_full = 0  # admissions refused because max_rows was reached


class RowStore(abc.ABC):
    """Row access and the row-wise Adagrad step over row-aligned tensors.

    Shared by :class:`DynamicEmbeddingTable` and
    :class:`~trainer.tables.group.TableGroup`, which provide ``weights``
    ``[capacity, dim]``, ``momentum`` ``[capacity]``, ``touched`` and ``config``.
    """

    weights: torch.Tensor
    momentum: torch.Tensor
    touched: torch.Tensor
    config: TableConfig
    # Every row-aligned tensor attribute, (re)allocated together by _alloc.
    _ROW_TENSORS: tuple[str, ...] = ("weights", "momentum", "last_seen_ms", "row_ids", "live",
                                     "touched")

    @abc.abstractmethod
    def _alloc(self, capacity: int) -> None:
        """(Re)allocate every tensor of ``_ROW_TENSORS`` with ``capacity`` rows."""

    def _grow_to(self, rows_needed: int) -> None:
        """Double the row tensors until ``rows_needed`` rows fit, keeping their contents."""
        capacity = self.weights.shape[0]
        if rows_needed <= capacity:
            return
        while capacity < rows_needed:
            capacity *= 2
        old = [getattr(self, name) for name in self._ROW_TENSORS]
        self._alloc(capacity)
        for name, prev in zip(self._ROW_TENSORS, old):
            getattr(self, name)[: prev.shape[0]] = prev

    # index_select / index_add_ / index_copy_ rather than advanced indexing:
    # on CPU they are several times faster for the batch sizes of a step.

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """``[len(rows), dim]`` values (a copy); zeros where ``rows`` is -1."""
        return self.weights.index_select(0, rows.clamp(min=0)).mul_((rows >= 0).unsqueeze(1))

    def update(self, rows: torch.Tensor, grads: torch.Tensor, lr: float | None = None) -> None:
        """Row-wise Adagrad step on unique ``rows`` with ``grads`` ``[len(rows), dim]``."""
        keep = torch.nonzero(rows >= 0).reshape(-1)
        if keep.numel() < rows.numel():
            rows, grads = rows.index_select(0, keep), grads.index_select(0, keep)
        if rows.numel() == 0:
            return
        lr = self.config.lr if lr is None else lr
        m = self.momentum.index_select(0, rows).add_(grads.pow(2).mean(dim=1))
        self.momentum.index_copy_(0, rows, m)
        self.weights.index_add_(0, rows, grads * (-lr / (m.sqrt() + _ADAGRAD_EPS)).unsqueeze(1))
        self.touched.index_fill_(0, rows, True)

    def set_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite live ``rows`` with ``values`` (non-gradient state, e.g. counts)."""
        self.weights.index_copy_(0, rows, values)
        self.touched.index_fill_(0, rows, True)



class DynamicEmbeddingTable(RowStore):
    """One embedding table keyed by raw int64 ids.

    Row numbers returned by :meth:`lookup` index :meth:`read` and
    :meth:`update`; -1 stands for "no row" (an id not admitted yet), which reads
    as zeros and takes no update. Not thread-safe: the trainer serialises calls.
    """

    def __init__(self, name: str, dim: int, config: TableConfig, seed: int = 0) -> None:
        self.name = name
        self.dim = dim
        self.config = config
        self.index = IdIndex(initial_slots=2 * config.initial_capacity)
        self.filter = FrequencyFilter(config.min_count, config.filter_width, config.filter_depth)
        self.stats = TableStats()
        self.seed = seed
        self._ttl_ms = int(config.ttl_s * 1000)
        self._sweep_at = 0
        self._tombstones: list[torch.Tensor] = []
        self._alloc(config.initial_capacity)

    def _alloc(self, capacity: int) -> None:
        self.weights = torch.zeros((capacity, self.dim), dtype=torch.float32)
        self.momentum = torch.zeros(capacity, dtype=torch.float32)
        self.last_seen_ms = torch.zeros(capacity, dtype=torch.int64)
        self.row_ids = torch.zeros(capacity, dtype=torch.int64)
        self.live = torch.zeros(capacity, dtype=torch.bool)
        self.touched = torch.zeros(capacity, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.index)

    def memory_bytes(self) -> int:
        per_row = self.dim * 4 + 4 + 8 + 8 + 1 + 1
        return self.weights.shape[0] * per_row + self.index.memory_bytes() + \
            self.filter.memory_bytes()

    def _init_rows(self, rows: torch.Tensor, ids: torch.Tensor, now_ms: int) -> None:
        init = id_normal(ids, self.dim, self.seed) * self.config.init_std
        # The last column is the id's first-order weight (see trainer.model):
        # it starts at zero so an unseen id adds nothing to the logit.
        init[:, -1] = 0.0
        self.weights[rows] = init
        self.momentum[rows] = 0.0
        self.row_ids[rows] = ids
        self.live[rows] = True
        self.last_seen_ms[rows] = now_ms

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        """Rows of unique ``ids`` (-1 where the id has no row).

        With ``train`` the lookup counts as a sighting: ``counts[i]``
        occurrences of ``ids[i]`` go to the frequency filter, ids that pass
        it get a fresh row, and every returned row's last-seen time becomes
        ``now_ms`` (event time). Without ``train`` nothing changes.
        """
        rows = self.index.lookup(ids)
        if not train:
            return rows
        missing = rows < 0
        if bool(missing.any()):
            miss_ids = ids[missing]
            miss_counts = counts[missing] if counts is not None else torch.ones_like(miss_ids)
            admit = self.filter.observe(miss_ids, miss_counts)
            if self.config.max_rows:
                room = max(0, self.config.max_rows - len(self.index))
                over = torch.nonzero(admit).reshape(-1)[room:]
                admit[over] = False
                self.stats.rejected_full += int(over.numel())
            new_ids = miss_ids[admit]
            if new_ids.numel():
                new_rows = self.index.insert(new_ids)
                self._grow_to(self.index.row_capacity)
                self._init_rows(new_rows, new_ids, now_ms)
                miss_rows = torch.full_like(miss_ids, -1)
                miss_rows[admit] = new_rows
                rows[missing] = miss_rows
                self.stats.admitted += int(new_ids.numel())
            self.stats.filtered += int((~admit).sum())
        hit = rows >= 0
        self.last_seen_ms[rows[hit]] = now_ms
        return rows

    def expire(self, now_ms: int, max_rows: int = _SWEEP_ROWS,
               prune_below: float | None = None) -> int:
        """Free stale and pruned rows, visiting at most ``max_rows`` rows.

        A row is stale when unseen since ``now_ms - ttl``, and pruned when its
        L1 norm is under ``prune_below`` (OptEmbed's learned threshold).
        Successive calls sweep the row range round-robin, so every row is
        checked once per ``capacity / max_rows`` calls. Returns rows freed.
        """
        if self._ttl_ms <= 0 and prune_below is None:
            return 0
        end_all = self.index.row_capacity
        if end_all == 0:
            return 0
        visit, self._sweep_at = sweep_window(self._sweep_at, max_rows, end_all)
        live = self.live[visit]
        stale = live & (self.last_seen_ms[visit] < now_ms - self._ttl_ms) if self._ttl_ms > 0 \
            else torch.zeros_like(live)
        pruned = live & ~stale & (self.weights[visit].abs().sum(dim=1) < prune_below) \
            if prune_below is not None else torch.zeros_like(live)
        rows = visit[stale | pruned]
        if rows.numel() == 0:
            return 0
        n_pruned = int(pruned.sum())
        self.evict_rows(rows)
        self.stats.evicted -= n_pruned
        self.stats.pruned += n_pruned
        return int(rows.numel())

    def evict_rows(self, rows: torch.Tensor) -> None:
        """Free ``rows`` (live rows), clear their state and record tombstones."""
        ids = self.row_ids[rows]
        self.index.remove(ids)
        self.weights[rows] = 0.0
        self.momentum[rows] = 0.0
        self.live[rows] = False
        self.touched[rows] = False
        self._tombstones.append(ids)
        self.stats.evicted += int(rows.numel())

    def collect_delta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, values, evicted_ids)`` changed since the last call; resets tracking.

        An id evicted and re-admitted in between appears in both: apply
        tombstones first, then rows.
        """
        rows = torch.nonzero(self.touched).reshape(-1)
        self.touched[rows] = False
        evicted = torch.cat(self._tombstones) if self._tombstones else \
            torch.empty(0, dtype=torch.int64)
        self._tombstones = []
        return self.row_ids.index_select(0, rows), self.weights.index_select(0, rows), evicted

    def export_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, values)`` of every live row."""
        ids, rows = self.index.items()
        return ids, self.weights[rows].clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume: index, rows, optimizer and filter state."""
        n = self.index.row_capacity
        state = {f"index.{k}": v for k, v in self.index.state_dict().items()}
        state.update({f"filter.{k}": v for k, v in self.filter.state_dict().items()})
        state.update({
            "weights": self.weights[:n].clone(), "momentum": self.momentum[:n].clone(),
            "last_seen_ms": self.last_seen_ms[:n].clone(), "row_ids": self.row_ids[:n].clone(),
            "live": self.live[:n].clone(), "touched": self.touched[:n].clone(),
            "tombstones": torch.cat(self._tombstones) if self._tombstones
            else torch.empty(0, dtype=torch.int64),
            "sweep_at": torch.tensor(self._sweep_at),
        })
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["weights"].shape[1:] != (self.dim,):
            raise ValueError(f"table {self.name}: checkpoint rows have shape "
                             f"{tuple(state['weights'].shape)}, expected [*, {self.dim}]")
        self.index = IdIndex.from_state_dict(
            {k[len("index."):]: v for k, v in state.items() if k.startswith("index.")})
        self.filter.load_state_dict(
            {k[len("filter."):]: v for k, v in state.items() if k.startswith("filter.")})
        n = state["weights"].shape[0]
        self._alloc(max(self.config.initial_capacity, n))
        for name in ("weights", "momentum", "last_seen_ms", "row_ids", "live", "touched"):
            getattr(self, name)[:n] = state[name]
        self._tombstones = [state["tombstones"]] if state["tombstones"].numel() else []
        self._sweep_at = int(state["sweep_at"])

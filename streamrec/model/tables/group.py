"""TableGroup: several dynamic tables in one storage, so a training step is one pass.

Rows of all its tables share one set of row tensors and one tagged id index
keyed by ``(table, id)``; each table is seen through a :class:`GroupTableView`.
This is the one implementation of the table semantics (docs/tables.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from streamrec.config import TableConfig
from streamrec.model.records import EvictedIds, TableDelta, UpsertedRows
from streamrec.model.tables.filter import FrequencyFilter
from streamrec.model.tables.index import IdIndex
from streamrec.model.tables.reserve import ReservedArray
from streamrec.model.tables.rows import SWEEP_ROWS, TableStats, id_normal, sweep_window

__all__ = ["GroupTableView", "TableGroup"]

_STATS = TableStats.__slots__
_ADAGRAD_EPS = 1e-8
# Times are int32 milliseconds since the group's epoch: exact within 24.8 days of
# it. The epoch moves to the present when event time leaves that range; older
# times then read as the range's edge, i.e. ages past 24.8 days are
# underestimated (a row expires late, never early).
_TIME_MIN, _TIME_MAX = -(1 << 31), (1 << 31) - 1




def _before(times: torch.Tensor, at: int, inclusive: bool) -> torch.Tensor:
    """Mask of stored (int32) ``times`` before ``at`` (or at it, if ``inclusive``): compared
    as int32, with ``at`` beyond the int32 range meaning all or none."""
    if at > _TIME_MAX or (inclusive and at == _TIME_MAX):
        return torch.ones_like(times, dtype=torch.bool)
    if at < _TIME_MIN:
        return torch.zeros_like(times, dtype=torch.bool)
    return times <= at if inclusive else times < at


class TableGroup:
    """The tables of ``names`` (tags ``0..len(names)-1``), one config, one storage.

    A :class:`~streamrec.model.tables.store.TableStore`: row ids are
    group-wide; -1 stands for "no row" (an id not admitted yet), which reads
    as zeros and takes no update. Not thread-safe: the trainer serialises calls.
    """

    collective = False

    def __init__(self, names: list[str], dim: int, config: TableConfig, seed: int = 0) -> None:
        if config.shards != 1:
            raise ValueError("a TableGroup holds unsharded tables (shards = 1)")
        self.names = list(names)
        self.tag_of = {n: t for t, n in enumerate(self.names)}
        self.dim = dim
        self.config = config
        self.seed = seed
        n = len(self.names)
        if n > torch.iinfo(torch.int16).max:
            raise ValueError(f"a TableGroup holds at most 32767 tables, got {n}")
        capacity = config.initial_capacity * n
        self.index = IdIndex(initial_slots=2 * capacity, tagged=True)
        self.filter = FrequencyFilter(config.min_count, config.filter_width,
                                      config.filter_depth, tags=n)
        self.counters = {k: torch.zeros(n, dtype=torch.int64) for k in _STATS}
        self.rows_per_tag = torch.zeros(n, dtype=torch.int64)
        self._ttl_ms = int(config.ttl_s * 1000)
        self._grace_ms = int(config.prune_grace_s * 1000)
        self._sweep_at: dict[int | None, int] = {}
        # Evicted (ids, tags) not yet sorted by table, then per table.
        self._evicted_unsorted: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._keep_evicted_ids = True  # see keep_evicted_ids()
        self._evicted_ids: list[list[torch.Tensor]] = [[] for _ in self.names]
        # Touched rows per table, computed once for all tables per sync round
        # (valid while _version, bumped by every change to rows, is unchanged).
        self._version = 0
        self._touched_by_tag: tuple[int, list[torch.Tensor]] | None = None
        # Rows flagged touched since the touched rows were last computed, so that
        # computing them reads these, not every row's flag (150 ms at 50M rows).
        # Past _log_limit() rows (no one collecting) the log is dropped and the
        # next computation scans the flags.
        self._touched_log: list[torch.Tensor] | None = []
        self._touched_logged = 0
        self._epoch_ms: int | None = None
        limit = self.index.row_limit
        self._store = {"weights": ReservedArray(torch.float32, limit, (dim,)),
                       "adagrad_state": ReservedArray(torch.float32, limit),
                       "last_seen": ReservedArray(torch.int32, limit),
                       "admitted": ReservedArray(torch.int32, limit),
                       "touched": ReservedArray(torch.bool, limit)}
        self._grow_to(1)  # (reads of "no row" (-1) read row 0, then zero it)
        self.views = {name: GroupTableView(self, name) for name in self.names}

    # Storage --------------------------------------------------------------------------

    # Row-aligned, in reserved address space: growing never copies rows. The
    # ids and tags of rows live in the index (one copy of each key). Per row:
    # dim float32 weights, one float32 Adagrad accumulator, two int32 times,
    # a touched flag; the index adds the id, the tag and its slots.
    weights: torch.Tensor
    adagrad_state: torch.Tensor
    last_seen: torch.Tensor
    admitted: torch.Tensor
    touched: torch.Tensor

    def _grow_to(self, rows_needed: int) -> None:
        """Make rows ``0..rows_needed-1`` addressable, keeping their contents."""
        for name, store in self._store.items():
            setattr(self, name, store.ensure(rows_needed))

    @property
    def row_ids(self) -> torch.Tensor:
        """The id of each row (the index's copy)."""
        return self.index.row_ids

    @property
    def row_tags(self) -> torch.Tensor:
        """The table (tag) of each row, -1 for a free row (int16, the index's copy)."""
        return self.index.row_tags

    # Times --------------------------------------------------------------------------

    def _stamp(self, now_ms: int) -> int:
        """``now_ms`` as a stored time, moving the epoch first if it is out of range."""
        if self._epoch_ms is None:
            self._epoch_ms = now_ms
        if not _TIME_MIN <= now_ms - self._epoch_ms <= _TIME_MAX:
            self._rebase(now_ms)
        return now_ms - self._epoch_ms  # type: ignore[operator]

    def _rebase(self, epoch_ms: int) -> None:
        """Move the epoch to ``epoch_ms`` (one pass over the rows' times, rare)."""
        shift = epoch_ms - (self._epoch_ms or 0)
        n = self.index.row_capacity
        for times in (self.last_seen, self.admitted):
            for start in range(0, n, 1 << 20):
                part = times[start: start + (1 << 20)]
                part.copy_((part.to(torch.int64) - shift).clamp_(_TIME_MIN, _TIME_MAX))
        self._epoch_ms = epoch_ms

    def _stored_times(self, ms: torch.Tensor) -> torch.Tensor:
        """int64 event times (ms) as stored times (int32, clamped to the range)."""
        if self._epoch_ms is None:
            self._epoch_ms = int(ms.max()) if ms.numel() else 0
        return (ms.to(torch.int64) - self._epoch_ms).clamp_(_TIME_MIN, _TIME_MAX).to(torch.int32)

    def times_ms(self, times: torch.Tensor) -> torch.Tensor:
        """Stored times as int64 event times (ms)."""
        return times.to(torch.int64) + (self._epoch_ms or 0)

    def __len__(self) -> int:
        return len(self.index)

    def memory_bytes(self) -> int:
        """Everything the group holds: row tensors, index (keys included) and sketches."""
        small = sum(t.numel() * t.element_size() for t in
                    [*self.counters.values(), self.rows_per_tag, *(self._touched_log or []),
                     *(t for pair in self._evicted_unsorted for t in pair),
                     *(t for parts in self._evicted_ids for t in parts)])
        return sum(store.nbytes() for store in self._store.values()) + \
            self.index.memory_bytes() + self.filter.memory_bytes() + small

    def _count(self, stat: str, tags: torch.Tensor) -> None:
        if tags.numel():
            self.counters[stat] += torch.bincount(tags, minlength=len(self.names))

    # The fused step ------------------------------------------------------------------

    def lookup(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        """Rows of unique ``(tags[i], ids[i])`` pairs (-1 where none).

        With ``train`` the lookup counts as a sighting: ``counts[i]``
        occurrences of the pair go to its table's frequency filter, pairs that
        pass it get a fresh row, and every returned row's last-seen time
        becomes ``now_ms`` (event time). Without ``train`` nothing changes.
        """
        rows = self.index.lookup(ids, tags)
        if not train:
            return rows
        stamp = self._stamp(now_ms)
        missing = torch.nonzero(rows < 0).reshape(-1)
        if missing.numel():
            miss_ids, miss_tags = ids.index_select(0, missing), tags.index_select(0, missing)
            miss_counts = counts.index_select(0, missing) if counts is not None \
                else torch.ones_like(miss_ids)
            admit = self.filter.observe(miss_ids, miss_counts, miss_tags)
            self._count("filtered", miss_tags[~admit])  # (room refusals count as rejected_full)
            if self.config.max_rows:
                admit &= self._within_room(miss_ids, miss_tags, admit)
            new = torch.nonzero(admit).reshape(-1)
            if new.numel():
                new_ids, new_tags = miss_ids.index_select(0, new), miss_tags.index_select(0, new)
                new_rows = self.index.insert(new_ids, new_tags)
                self._grow_to(self.index.row_capacity)
                self._init_rows(new_rows, new_ids, new_tags, stamp)
                rows.index_copy_(0, missing.index_select(0, new), new_rows)
                self._count("admitted", new_tags)
        self.last_seen.index_fill_(0, rows[rows >= 0], stamp)
        return rows

    def _within_room(self, ids: torch.Tensor, tags: torch.Tensor, admit: torch.Tensor
                     ) -> torch.Tensor:
        """Mask of admitted candidates that still fit under ``max_rows`` in their table.

        Where not all fit, the smallest ids win: a rule that does not depend on
        the order the candidates come in (the dedup's order differs between a
        table group and a lone table).
        """
        room = (self.config.max_rows - self.rows_per_tag).clamp(min=0)
        cand = torch.nonzero(admit).reshape(-1)
        cand = cand[torch.argsort(ids[cand], stable=True)]
        order = torch.sort(tags[cand], stable=True)
        sorted_tags = order.values
        # Rank of each candidate among its table's candidates, by id.
        first = torch.searchsorted(sorted_tags, sorted_tags)
        rank = torch.arange(sorted_tags.numel()) - first
        fits = torch.zeros_like(admit)
        fits[cand[order.indices]] = rank < room[sorted_tags]
        self._count("rejected_full", tags[admit & ~fits])
        return fits

    def _init_rows(self, rows: torch.Tensor, ids: torch.Tensor, tags: torch.Tensor,
                   stamp: int) -> None:
        # A function of (seed, id) only: the same id starts from the same
        # values whatever the grouping, sharding or admission order.
        init = id_normal(ids, self.dim, self.seed) * self.config.init_std
        init[:, -1] = 0.0  # the first-order weight starts at zero (see streamrec.model.ctr)
        self.weights.index_copy_(0, rows, init)
        self.adagrad_state.index_fill_(0, rows, 0.0)
        self.last_seen.index_fill_(0, rows, stamp)
        self.admitted.index_fill_(0, rows, stamp)
        # A new row is a change the replicas must see, even if no update
        # follows (a step skipped for a non-finite loss admits but learns nothing).
        self._mark_touched(rows)
        self.rows_per_tag += torch.bincount(tags, minlength=len(self.names))
        self._version += 1

    def expire(self, now_ms: int, max_rows: int = SWEEP_ROWS,
               prune_below: torch.Tensor | None = None, tag: int | None = None) -> int:
        """Free stale and pruned rows among the next ``max_rows`` rows of the sweep.

        ``prune_below[t]`` is table t's OptEmbed threshold (NaN or <= 0: no
        pruning). With ``tag`` only that table's rows are freed (its own
        cursor). Returns rows freed.
        """
        prune = prune_below is not None and bool((prune_below > 0).any())
        if self._ttl_ms <= 0 and not prune:
            return 0
        end_all = self.index.row_capacity
        if end_all == 0:
            return 0
        ranges, self._sweep_at[tag] = sweep_window(self._sweep_at.get(tag, 0), max_rows,
                                                   end_all)
        epoch = self._epoch_ms or 0
        ttl_at = now_ms - self._ttl_ms - epoch if self._ttl_ms > 0 else None
        grace_at = now_ms - self._grace_ms - epoch
        found = [self._sweep(start, stop, tag, ttl_at, prune_below if prune else None, grace_at)
                 for start, stop in ranges]
        stale_rows = torch.cat([f[0] for f in found])
        pruned_rows = torch.cat([f[1] for f in found])
        rows = torch.cat([stale_rows, pruned_rows])
        if rows.numel() == 0:
            return 0
        # Each freed row counted once, as evicted (stale) or pruned: a
        # metrics scrape may read the counters at any moment, and a counter
        # must never go down.
        self._count("evicted", self.row_tags[stale_rows].to(torch.int64))
        self._count("pruned", self.row_tags[pruned_rows].to(torch.int64))
        self.evict_rows(rows, counted=True)
        return int(rows.numel())

    def _sweep(self, start: int, stop: int, tag: int | None, ttl_at: int | None,
               prune_below: torch.Tensor | None, grace_at: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(stale rows, pruned rows) among rows ``start..stop-1``: slices of the row
        tensors compared in their own narrow types. ``ttl_at``, ``grace_at``: stored
        times a row last seen / admitted before (at) is stale / past its grace."""
        tags = self.row_tags[start:stop]
        live = tags >= 0 if tag is None else tags == tag
        stale = live & _before(self.last_seen[start:stop], ttl_at, inclusive=False) \
            if ttl_at is not None else torch.zeros_like(live)
        pruned = torch.zeros_like(live)
        if prune_below is not None:
            old = live & ~stale & _before(self.admitted[start:stop], grace_at, inclusive=True)
            at = torch.nonzero(old).reshape(-1) + start
            if at.numel():
                limit = prune_below.nan_to_num(0.0)[self.row_tags[at].to(torch.int64)]
                small = self.weights.index_select(0, at).abs().sum(dim=1) < limit
                pruned[at[small] - start] = True
        return (torch.nonzero(stale).reshape(-1) + start,
                torch.nonzero(pruned).reshape(-1) + start)
    def evict_rows(self, rows: torch.Tensor, counted: bool = False) -> None:
        """Free ``rows`` (live rows), clear their state and record their ids as evicted.

        Counted as evicted unless ``counted`` (the caller counted them itself).
        """
        ids, tags = self.row_ids[rows], self.row_tags[rows].to(torch.int64)
        self.index.remove(ids, tags)  # (marks the rows free: tag -1)
        self.weights[rows] = 0.0
        self.adagrad_state[rows] = 0.0
        self.touched[rows] = False
        if self._keep_evicted_ids:
            self._evicted_unsorted.append((ids, tags))
        self._version += 1
        self.rows_per_tag -= torch.bincount(tags, minlength=len(self.names))
        if not counted:
            self._count("evicted", tags)

    def keep_evicted_ids(self, enabled: bool) -> None:
        """Whether evicted ids are recorded for deltas; turning it off drops those held.

        Off when no replica consumes deltas: evicted ids would pile up forever.
        """
        self._keep_evicted_ids = enabled
        if not enabled:
            self._evicted_unsorted = []
            self._evicted_ids = [[] for _ in self.names]

    def _by_tag(self, values: torch.Tensor, tags: torch.Tensor) -> list[torch.Tensor]:
        """``values`` split by tag (one sort for every table)."""
        order = torch.argsort(tags, stable=True)
        sizes = torch.bincount(tags, minlength=len(self.names)).tolist()
        return list(torch.split(values[order], sizes))

    def _sort_evicted_ids(self) -> None:
        if self._evicted_unsorted:
            ids = torch.cat([i for i, _ in self._evicted_unsorted])
            tags = torch.cat([t for _, t in self._evicted_unsorted])
            self._evicted_unsorted = []
            for tag, part in enumerate(self._by_tag(ids, tags)):
                if part.numel():
                    self._evicted_ids[tag].append(part)

    def take_evicted_ids(self, tag: int) -> torch.Tensor:
        """Ids of table ``tag`` evicted since the last call for that table."""
        ids = self.peek_evicted_ids(tag)
        self._evicted_ids[tag] = []
        return ids

    def peek_evicted_ids(self, tag: int) -> torch.Tensor:
        self._sort_evicted_ids()
        parts = self._evicted_ids[tag]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def _mark_touched(self, rows: torch.Tensor) -> None:
        self.touched.index_fill_(0, rows, True)
        if self._touched_log is not None:
            self._touched_log.append(rows)
            self._touched_logged += rows.numel()
            if self._touched_logged > max(1 << 16, self.index.row_capacity // 8):
                self._touched_log = None

    def _touched_rows(self) -> torch.Tensor:
        """Rows flagged touched (ascending): from the log and the rows computed before
        and not yet taken, or by a scan of every row's flag when the log was dropped."""
        if self._touched_log is None:
            rows = torch.nonzero(self.touched[: self.index.row_capacity]).reshape(-1)
        else:
            untaken = self._touched_by_tag[1] if self._touched_by_tag is not None else []
            rows = torch.unique(torch.cat([*self._touched_log, *untaken,
                                           torch.empty(0, dtype=torch.int64)]))
            rows = rows[self.touched.index_select(0, rows)]
        self._touched_log, self._touched_logged = [], 0
        return rows

    def take_touched(self, tag: int) -> torch.Tensor:
        """Rows of table ``tag`` changed since its last call; clears their flags.

        Sync collects every table in turn with nothing trained in between, so
        the touched rows are computed once for all tables.
        """
        if self._touched_by_tag is None or self._touched_by_tag[0] != self._version:
            rows = self._touched_rows()
            self._touched_by_tag = (self._version,
                                    self._by_tag(rows, self.row_tags[rows].to(torch.int64)))
        rows = self._touched_by_tag[1][tag]
        self._touched_by_tag[1][tag] = rows[:0]
        self.touched[rows] = False
        return rows

    # index_select / index_add_ / index_copy_ rather than advanced indexing:
    # on CPU they are several times faster for the batch sizes of a step.

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        """``[len(row_ids), dim]`` row values (a copy); zeros where a row id is -1."""
        return self.weights.index_select(0, row_ids.clamp(min=0)).mul_(
            (row_ids >= 0).unsqueeze(1))

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        """Row-wise Adagrad step on unique ``row_ids`` with ``grads`` ``[len(row_ids), dim]``.

        fbgemm's EXACT_ROWWISE_ADAGRAD: one second-moment scalar per row, the
        mean of the squared gradient over the row's columns.
        """
        rows = row_ids
        keep = torch.nonzero(rows >= 0).reshape(-1)
        if keep.numel() < rows.numel():
            rows, grads = rows.index_select(0, keep), grads.index_select(0, keep)
        if rows.numel() == 0:
            return
        lr = self.config.lr if lr is None else lr
        m = self.adagrad_state.index_select(0, rows).add_(grads.pow(2).mean(dim=1))
        self.adagrad_state.index_copy_(0, rows, m)
        self.weights.index_add_(0, rows, grads * (-lr / (m.sqrt() + _ADAGRAD_EPS)).unsqueeze(1))
        self._mark_touched(rows)
        self._version += 1

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite live rows with ``values`` (non-gradient state, e.g. counts)."""
        self.weights.index_copy_(0, row_ids, values)
        self._mark_touched(row_ids)
        self._version += 1

    def rows_of(self, tag: int) -> torch.Tensor:
        """Live rows of table ``tag`` (O(capacity) scan)."""
        n = self.index.row_capacity
        return torch.nonzero(self.row_tags[:n] == tag).reshape(-1)

    def clear_table(self, tag: int) -> None:
        """Free every row of table ``tag`` as evictions would (ids recorded), uncounted."""
        self.evict_rows(self.rows_of(tag), counted=True)

    # Checkpoints ------------------------------------------------------------------

    def table_state(self, tag: int) -> dict[str, torch.Tensor]:
        """Table ``tag``'s rows by id (row ids are not part of the state)."""
        rows = self.rows_of(tag)
        state = {f"filter.{k}": v for k, v in self.filter.state_dict(tag).items()}
        state.update({
            "ids": self.row_ids.index_select(0, rows),
            "weights": self.weights.index_select(0, rows),
            "adagrad_state": self.adagrad_state.index_select(0, rows),
            "touched": self.touched.index_select(0, rows),
            "last_seen_ms": self.times_ms(self.last_seen.index_select(0, rows)),
            "admitted_ms": self.times_ms(self.admitted.index_select(0, rows)),
            "evicted_ids": self.peek_evicted_ids(tag),
        })
        return state

    def load_table(self, tag: int, state: Mapping[str, torch.Tensor]) -> None:
        """Replace table ``tag``'s rows with a :meth:`table_state` (or an older format).

        Reads the keys of earlier releases too: ``momentum`` (the Adagrad
        state), ``tombstones`` (evicted ids), rows by the table's own row ids
        (``index.ids`` / ``index.rows``), no admission times.
        """
        name = self.names[tag]
        state = _renamed(state)
        if state["weights"].shape[1:] != (self.dim,):
            raise ValueError(f"table {name}: checkpoint rows have shape "
                             f"{tuple(state['weights'].shape)}, expected [*, {self.dim}]")
        if "ids" in state:
            ids, at = state["ids"], slice(None)
        else:  # the per-table format: rows by the table's own row ids
            ids, at = state["index.ids"], state["index.rows"]
        self.filter.load_state_dict(
            {k[len("filter."):]: v for k, v in state.items() if k.startswith("filter.")}, tag)
        mine = self.rows_of(tag)
        if mine.numel():  # replaced, not expired: no evicted ids, no eviction counted
            self.evict_rows(mine, counted=True)
            self.take_evicted_ids(tag)
        rows = self.index.insert(ids, torch.full_like(ids, tag))
        self._grow_to(self.index.row_capacity)
        self.weights[rows] = state["weights"][at]
        self.adagrad_state[rows] = state["adagrad_state"][at]
        self.last_seen[rows] = self._stored_times(state["last_seen_ms"][at])
        # (Older checkpoints lack admission times: such rows start a new grace.)
        self.admitted[rows] = self._stored_times(
            state.get("admitted_ms", state["last_seen_ms"])[at])
        self.touched[rows] = state["touched"][at]
        self._touched_log = None  # (rows flagged without the log: the next collection scans)
        self.rows_per_tag[tag] = ids.numel()
        evicted = state["evicted_ids"]
        if evicted.numel():
            self._evicted_ids[tag].append(evicted.clone())
        self._version += 1


# Checkpoint keys of earlier releases, by their current names.
_OLD_KEYS = {"momentum": "adagrad_state", "tombstones": "evicted_ids"}


def _renamed(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the keys of earlier releases under their current names."""
    return {_OLD_KEYS.get(k, k): v for k, v in state.items()}


class GroupTableView:
    """One table inside a :class:`TableGroup`: the ``EmbeddingTable`` interface.

    Its ``store`` is the group; ``tag`` its position there.
    """

    shard_count = 1

    def __init__(self, group: TableGroup, name: str) -> None:
        self.group = group
        self.store = group
        self.name = name
        self.tag = group.tag_of[name]
        self.dim = group.dim
        self.config = group.config

    def __len__(self) -> int:
        return int(self.group.rows_per_tag[self.tag])

    @property
    def stats(self) -> TableStats:
        stats = TableStats()
        for k in _STATS:
            setattr(stats, k, int(self.group.counters[k][self.tag]))
        return stats

    def memory_bytes(self) -> int:
        """This table's share of the group: its sketch, and rows/index pro rata of live rows."""
        g = self.group
        sketch = g.filter.memory_bytes() // len(g.names)
        total_rows = int(g.rows_per_tag.sum())
        share = len(self) / total_rows if total_rows else 1 / len(g.names)
        return sketch + int((g.memory_bytes() - g.filter.memory_bytes()) * share)

    def _tags(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.full_like(ids, self.tag)

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        return self.group.lookup(self._tags(ids), ids, counts, now_ms=now_ms, train=train)

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        return self.group.read(row_ids)

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        self.group.update(row_ids, grads, lr)

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        self.group.set_rows(row_ids, values)

    def expire(self, now_ms: int, max_rows: int = SWEEP_ROWS,
               prune_below: float | None = None) -> int:
        limits = None
        if prune_below is not None:
            limits = torch.full((len(self.group.names),), float("nan"))
            limits[self.tag] = prune_below
        return self.group.expire(now_ms, max_rows, limits, tag=self.tag)

    def keep_evicted_ids(self, enabled: bool) -> None:
        """Whether evicted ids are kept for deltas (for the whole group)."""
        self.group.keep_evicted_ids(enabled)

    def clear(self) -> None:
        self.group.clear_table(self.tag)

    def collect_delta(self) -> TableDelta:
        """Rows touched and ids evicted since the last call; resets tracking."""
        g = self.group
        rows = g.take_touched(self.tag)
        return TableDelta(self.name, self.dim, UpsertedRows(g.row_ids.index_select(0, rows),
                                                            g.weights.index_select(0, rows)),
                          EvictedIds(g.take_evicted_ids(self.tag)))

    def export_all(self) -> TableDelta:
        """Every live row of this table (no evicted ids)."""
        g = self.group
        rows = g.rows_of(self.tag)
        return TableDelta(self.name, self.dim, UpsertedRows(g.row_ids.index_select(0, rows),
                                                            g.weights.index_select(0, rows)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This table's rows by id (group row ids are not part of the state)."""
        return self.group.table_state(self.tag)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace this table's rows; reads this format and those of earlier releases."""
        self.group.load_table(self.tag, state)

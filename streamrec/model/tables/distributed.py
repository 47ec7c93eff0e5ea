"""Tables sharded across torch.distributed ranks: each rank owns the ids of its shard.

Data-parallel training with model-parallel tables, as TorchRec's row-wise
sharding does: every rank trains on its own slice of the global batch; a
lookup sends each id to the rank that owns it (``shard_of(id, world)``), the
owner admits/looks up the rows and returns their values; after backward the
gradients travel back to the owners, which sum the contributions of every
rank per row and take one row-wise Adagrad step. With ``1/world`` scaling, a
step on ``world`` equal slices equals a single-rank step on the whole batch.

Every table lives in one :class:`DistributedTableStore`, so a step's lookup
of all tables is one exchange of tagged ids, one of rows and one of
gradients (all-to-alls, plus one of their counts), whatever the number of
tables. History-count tables are in a store of their own, whose
``count_before`` / ``commit_counts`` keep each id's counts at the rank owning
it. Lookups and updates are collectives: every rank calls them in the
same order, ids or not (:class:`~streamrec.model.embedding.DynamicEmbeddingCollection`
does, as the store is ``collective``). Works with gloo on CPU
(``all_to_all_single``) and nccl on GPU alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist

from streamrec import native
from streamrec.config import TableConfig
from streamrec.model.records import TableDelta
from streamrec.model.tables.base import make_tables
from streamrec.model.tables.rows import SWEEP_ROWS, TableStats
from streamrec.model.tables.sharded import shard_of
from streamrec.model.tables.sort import exclusive_sums
from streamrec.model.tables.store import EmbeddingTable, TableStore, sighted_lookup, stores_of

__all__ = ["DistributedEmbeddingTable", "DistributedTableStore"]


def _exchange(tensor: torch.Tensor, send_counts: list[int], group: dist.ProcessGroup | None,
              recv_counts: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """All-to-all of ``tensor`` split by ``send_counts`` rows; returns rows received and counts.

    ``recv_counts``, when the caller knows them (a reply to an earlier exchange),
    saves the all-to-all that tells them.
    """
    if recv_counts is None:
        world = dist.get_world_size(group)
        counts_in = torch.tensor(send_counts, dtype=torch.int64)
        counts_out = torch.empty(world, dtype=torch.int64)
        dist.all_to_all_single(counts_out, counts_in, group=group)
        recv_counts = counts_out.tolist()
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), output_split_sizes=recv_counts,
                           input_split_sizes=send_counts, group=group)
    return out, recv_counts


@dataclasses.dataclass
class _Route:
    """Where the ids of the last lookup went, for the gradients to follow them."""

    order: torch.Tensor  # this rank's ids sorted by owner
    send_counts: list[int]
    recv_counts: list[int]
    stores: torch.Tensor  # per id received: the local store holding its row
    rows: torch.Tensor  # per id received: its row id in that store (-1: none)


class DistributedTableStore:
    """The :class:`TableStore` of every table sharded across the ranks of ``group``.

    ``names`` are its tables (tag ``t`` is ``names[t]``, each configured by
    ``config_of(name)``); this rank holds its shard of each, in local stores
    fused as :func:`~streamrec.model.tables.base.make_tables` fuses one
    process's tables. ``lookup`` returns *handles*: positions into this
    rank's last lookup (``-1`` where the pair has no row anywhere), which
    ``read`` and ``update`` take. ``tables`` holds each table's
    :class:`DistributedEmbeddingTable`.
    """

    collective = True  # lookup and update are collectives

    def __init__(self, names: list[str], dim: int, config_of: Callable[[str], TableConfig],
                 seed: int = 0, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedTableStore needs torch.distributed initialised")
        self.names = list(names)
        self.dim = dim
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        shards = make_tables(self.names, dim, config_of, seed=seed)
        self._locals: list[TableStore] = [store for store, _ in stores_of(shards)]
        position = {id(store): i for i, store in enumerate(self._locals)}
        # Per global tag: the local store holding the shard, and its tag there.
        self._store_of = torch.tensor([position[id(shards[n].store)] for n in self.names])
        self._local_tag = torch.tensor([shards[n].tag for n in self.names])
        self.tables = {n: DistributedEmbeddingTable(n, self, tag, shards[n], config_of(n))
                       for tag, n in enumerate(self.names)}
        self._values = torch.empty((0, dim))
        self._route: _Route | None = None
        # History counts to write after the step: (local store, row id, counts) per pair.
        self._counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # Pairs of the last owned_rows this rank holds: (local store, positions, rows).
        self._owned: list[tuple[TableStore, torch.Tensor, torch.Tensor]] = []

    def _send(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor,
              *more: torch.Tensor) -> tuple[_Route, torch.Tensor]:
        """Collective. Sends int64 rows ``(tag, id, count, *more)`` of this rank's pairs to
        their owners; returns the route and the rows received (in rank order)."""
        owner = shard_of(ids, self.world)
        order = torch.argsort(owner, stable=True)
        send_counts = torch.bincount(owner, minlength=self.world).tolist()
        payload = torch.stack([tags, ids, counts, *more], dim=1).index_select(0, order)
        received, recv_counts = _exchange(payload, send_counts, self.group)
        empty = torch.empty(0, dtype=torch.int64)
        return _Route(order, send_counts, recv_counts, empty, empty), received

    def _own(self, received: torch.Tensor, now_ms: int, train: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of the pairs ``received``: ``(inverse, stores, rows, values)`` per
        unique pair (``inverse`` maps each received row to its pair).

        The owner merges what every rank asked for, so the frequency filter
        counts a pair's sightings (the rows' counts) across the whole global batch.
        """
        pair_ids, pair_tags, inverse, _ = native.unique_pairs(
            received[:, 1].contiguous(), received[:, 0].contiguous())
        total = torch.zeros(pair_ids.numel(), dtype=torch.int64).index_add_(
            0, inverse, received[:, 2])
        stores = self._store_of[pair_tags]
        rows = torch.full_like(pair_ids, -1)
        values = torch.zeros((pair_ids.numel(), self.dim))
        for i, store in enumerate(self._locals):
            sel = slice(None) if len(self._locals) == 1 else \
                torch.nonzero(stores == i).reshape(-1)
            found = store.lookup(self._local_tag[pair_tags[sel]], pair_ids[sel], total[sel],
                                 now_ms=now_ms, train=train)
            rows[sel] = found
            values[sel] = store.read(found)
        return inverse, stores, rows, values

    def _answer(self, route: _Route, reply: torch.Tensor) -> torch.Tensor:
        """Collective. ``reply`` (a row per row received) back to the senders, in the
        order of their pairs."""
        back, _ = _exchange(reply, route.recv_counts, self.group, route.send_counts)
        local = torch.empty_like(back)
        local[route.order] = back
        return local

    def lookup(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        """Collective. Routes unique local ``(tags, ids)`` pairs to their owners; returns handles."""
        counts = torch.ones_like(ids) if counts is None else counts
        route, received = self._send(tags, ids, counts)
        inverse, stores, rows, values = self._own(received, now_ms, train)
        found = (rows >= 0).to(values.dtype).unsqueeze(1)
        local = self._answer(route, torch.cat([values, found], dim=1).index_select(0, inverse))
        self._values = local[:, :-1]
        self._route = dataclasses.replace(route, stores=stores[inverse], rows=rows[inverse])
        handles = torch.arange(ids.numel(), dtype=torch.int64)
        return torch.where(local[:, -1] > 0, handles, torch.full_like(handles, -1))

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        """The rows of the last lookup's ``row_ids`` (handles); zeros where -1."""
        out = self._values[row_ids.clamp(min=0)]
        out[row_ids < 0] = 0.0
        return out

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        """Collective. Sends each handle's gradient to its owner, which steps once per row."""
        route = self._route
        if route is None:
            raise RuntimeError("update() without a preceding lookup()")
        full = torch.zeros((len(route.order), self.dim), dtype=grads.dtype)
        valid = row_ids >= 0
        full[row_ids[valid]] = grads[valid]
        received, _ = _exchange(full.index_select(0, route.order), route.send_counts,
                                self.group, route.recv_counts)
        # Each rank's objective carries world / global count (see
        # OnlineTrainer._step): the average over ranks is the global batch's
        # gradient, whatever the slices' sizes.
        received = received / self.world
        for i, store in enumerate(self._locals):
            at = torch.nonzero((route.stores == i) & (route.rows >= 0)).reshape(-1)
            if not at.numel():
                continue
            unique_rows, inverse = torch.unique(route.rows[at], return_inverse=True)
            summed = torch.zeros((unique_rows.numel(), self.dim), dtype=grads.dtype)
            summed.index_add_(0, inverse, received[at])
            store.update(unique_rows, summed, lr=lr)
        self._route = None

    def owned_rows(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor,
                   now_ms: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Collective. The rows ``[len(ids), dim]`` of pairs every rank names alike
        (a global batch's), and whether each has one: each rank looks up the pairs
        it owns, admitting by ``counts`` those with a count above 0 and only
        reading the others, and one all-reduce gives every rank every row.
        :meth:`write_owned` then stores new values of the pairs this rank owns."""
        values = torch.zeros((ids.numel(), self.dim + 1))
        mine = torch.nonzero(shard_of(ids, self.world) == self.rank).reshape(-1)
        stores = self._store_of[tags.index_select(0, mine)]
        self._owned = []
        for i, store in enumerate(self._locals):
            at = mine if len(self._locals) == 1 else mine[stores == i]
            local_tags = self._local_tag[tags.index_select(0, at)]
            rows = sighted_lookup(store, local_tags, ids.index_select(0, at),
                                  counts.index_select(0, at), now_ms)
            found = torch.nonzero(rows >= 0).reshape(-1)
            values[at.index_select(0, found), :-1] = store.read(rows.index_select(0, found))
            values[at.index_select(0, found), -1] = 1.0
            self._owned.append((store, at.index_select(0, found), rows.index_select(0, found)))
        dist.all_reduce(values, group=self.group)
        return values[:, :-1], values[:, -1] > 0

    def write_owned(self, values: torch.Tensor) -> None:
        """Store ``values`` (a row per pair of the last :meth:`owned_rows`) of the pairs
        this rank owns and holds (not collective)."""
        for store, at, rows in self._owned:
            if at.numel():
                store.set_rows(rows, values.index_select(0, at))
        self._owned = []

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        # History counts are written where they live: count_before / commit_counts.
        raise RuntimeError("set_rows is not collective: a rank writes the counts it owns "
                           "(commit_counts)")

    def count_before(self, tags: torch.Tensor, ids: torch.Tensor, outcomes: torch.Tensor,
                     now_ms: int, train: bool) -> torch.Tensor:
        """Collective. History counts ``[len(ids), 2]`` (n, c) before this rank's examples.

        ``(tags, ids)`` are this rank's unique pairs and ``outcomes`` ``[len(ids), 2]``
        what its examples add to each (occurrences, clicks). The global batch's
        order is rank 0's slice, then rank 1's...: a pair's counts are those
        stored at its owner plus the outcomes of the ranks before this one
        (the caller adds its own examples' prefix). With ``train`` the owner
        admits by every rank's occurrences and keeps every rank's outcomes for
        :meth:`commit_counts`.
        """
        # (Clicks may be fractional labels: sent as their float64 bits.)
        route, received = self._send(tags, ids, outcomes[:, 0].round().to(torch.int64),
                                     outcomes[:, 1].to(torch.float64).view(torch.int64))
        inverse, stores, rows, stored = self._own(received, now_ms, train)
        adds = torch.stack([received[:, 2].to(torch.float32),
                            received[:, 3].contiguous().view(torch.float64).to(torch.float32)],
                           dim=1)
        # Each rank sends a pair once, and the received rows come in rank
        # order: the sums over the earlier rows of a pair are the earlier ranks'.
        before = self._answer(route, stored.index_select(0, inverse)
                              + exclusive_sums(inverse, adds))
        self._counts = None
        if train:
            totals = torch.zeros_like(stored).index_add_(0, inverse, adds)
            self._counts = (stores, rows, stored + totals)
        return before

    def commit_counts(self, write: Callable[[TableStore, torch.Tensor, torch.Tensor], None]
                      ) -> None:
        """Writes the last :meth:`count_before`'s new counts of the pairs this rank owns,
        ``write(local store, row ids, counts)`` (not collective: every rank calls it,
        or none, after a step that was not skipped)."""
        if self._counts is None:
            return
        stores, rows, new = self._counts
        self._counts = None
        for i, store in enumerate(self._locals):
            at = torch.nonzero((stores == i) & (rows >= 0)).reshape(-1)
            if at.numel():
                write(store, rows.index_select(0, at), new.index_select(0, at))

    def expire(self, now_ms: int, max_rows: int = SWEEP_ROWS,
               prune_below: torch.Tensor | None = None) -> int:
        """One bounded slice of each local store's sweep (this rank's shards only)."""
        per_table = max_rows // max(len(self.names), 1)
        freed = 0
        for i, store in enumerate(self._locals):
            limits = torch.full((len(store.names),), float("nan"))
            if prune_below is not None:
                tags = torch.nonzero(self._store_of == i).reshape(-1)
                limits[self._local_tag[tags]] = prune_below[tags]
            freed += store.expire(now_ms, per_table * len(store.names), limits)
        return freed


class DistributedEmbeddingTable:
    """The :class:`EmbeddingTable` interface over one table of a :class:`DistributedTableStore`.

    ``lookup``, ``read`` and ``update`` go through the store (handles, and
    collectives); ``len``, ``stats``, ``expire``, ``collect_delta``,
    ``export_all`` and ``state_dict`` are this rank's shard only: parameter
    sync and checkpoints run per rank.
    """

    shard_count = 1  # (its state is this rank's shard: one unsharded table)

    def __init__(self, name: str, store: DistributedTableStore, tag: int,
                 shard: EmbeddingTable, config: TableConfig) -> None:
        self.name = name
        self.dim = store.dim
        self.store = store
        self.tag = tag
        self.shard = shard
        self.config = config

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def stats(self) -> TableStats:
        return self.shard.stats

    def memory_bytes(self) -> int:
        return self.shard.memory_bytes()

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        """Collective. Unique local ``ids`` looked up at their owners; returns handles."""
        return self.store.lookup(torch.full_like(ids, self.tag), ids, counts, now_ms=now_ms,
                                 train=train)

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        return self.store.read(row_ids)

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        self.store.update(row_ids, grads, lr)

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        self.store.set_rows(row_ids, values)

    def expire(self, now_ms: int, max_rows: int = SWEEP_ROWS,
               prune_below: float | None = None) -> int:
        return self.shard.expire(now_ms, max_rows=max_rows, prune_below=prune_below)

    def keep_evicted_ids(self, enabled: bool) -> None:
        self.shard.keep_evicted_ids(enabled)

    def clear(self) -> None:
        self.shard.clear()

    def collect_delta(self) -> TableDelta:
        return dataclasses.replace(self.shard.collect_delta(), table=self.name)

    def export_all(self) -> TableDelta:
        return dataclasses.replace(self.shard.export_all(), table=self.name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shard.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shard.load_state_dict(state)

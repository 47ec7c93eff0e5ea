"""A table sharded across torch.distributed ranks: each rank owns the ids of its shard.

Data-parallel training with model-parallel tables, as TorchRec's row-wise
sharding does: every rank trains on its own slice of the global batch; a
lookup sends each id to the rank that owns it (``shard_of(id, world)``) with
an all-to-all, the owner admits/looks up the rows and returns their values
with a second all-to-all; after backward the gradients travel back to the
owners, which sum the contributions of every rank per row and take one
row-wise Adagrad step. With ``1/world`` scaling, a step on ``world`` equal
slices equals a single-rank step on the whole batch.

Every rank must call ``lookup``/``update`` in the same order (they are
collectives); :class:`~streamrec.model.embedding.DynamicEmbeddingCollection` does, and
calls ``update`` even when a rank has no ids for a feature (its store is ``collective``).
Works with gloo on CPU (``all_to_all_single``) and nccl on GPU alike.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from streamrec.config import TableConfig
from streamrec.model.records import TableDelta
from streamrec.model.tables.sharded import shard_of
from streamrec.model.tables.rows import SWEEP_ROWS, TableStats
from streamrec.model.tables.store import SingleTableStore
from streamrec.model.tables.table import DynamicEmbeddingTable

__all__ = ["DistributedEmbeddingTable"]


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


class DistributedEmbeddingTable:
    """The :class:`EmbeddingTable` interface over a table sharded across ranks.

    ``lookup`` returns *handles*: positions into this rank's last lookup
    (``-1`` where the id has no row anywhere). ``read``/``update`` take those
    handles. ``len``, ``stats``, ``expire``, ``collect_delta``, ``export_all``
    and ``state_dict`` are this rank's shard only; parameter sync and
    checkpoints run per rank. Its store is a collective store of one.
    """

    tag = 0
    shard_count = 1  # (its state is this rank's shard: one unsharded table)
    collective = True  # lookup and update are collectives (so is its store)

    def __init__(self, name: str, dim: int, config: TableConfig, seed: int = 0,
                 group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedEmbeddingTable needs torch.distributed initialised")
        self.name = name
        self.dim = dim
        self.config = config
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.shard = DynamicEmbeddingTable(f"{name}/rank{self.rank}", dim, config, seed=seed)
        self.store = SingleTableStore(self, collective=True)
        self._values = torch.empty((0, dim))
        self._route: tuple[torch.Tensor, list[int], list[int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def stats(self) -> TableStats:
        return self.shard.stats

    def memory_bytes(self) -> int:
        return self.shard.memory_bytes()

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        """Collective. Routes unique local ``ids`` to their owners; returns handles."""
        counts = torch.ones_like(ids) if counts is None else counts
        owner = shard_of(ids, self.world)
        order = torch.argsort(owner, stable=True)
        send_counts = torch.bincount(owner, minlength=self.world).tolist()
        payload = torch.stack([ids[order], counts[order]], dim=1)
        received, recv_counts = _exchange(payload, send_counts, self.group)
        # The owner merges what every rank asked for, so the frequency
        # filter counts an id's sightings across the whole global batch.
        unique, inverse = torch.unique(received[:, 0], return_inverse=True)
        total = torch.zeros(unique.numel(), dtype=torch.int64).index_add_(0, inverse,
                                                                           received[:, 1])
        rows = self.shard.lookup(unique, total, now_ms=now_ms, train=train)
        values = self.shard.read(rows)
        found = (rows >= 0).to(values.dtype).unsqueeze(1)
        reply = torch.cat([values, found], dim=1)[inverse]
        back, _ = _exchange(reply, recv_counts, self.group, send_counts)
        local = torch.empty_like(back)
        local[order] = back
        self._values = local[:, :-1]
        self._route = (order, send_counts, recv_counts, rows[inverse])
        handles = torch.arange(ids.numel(), dtype=torch.int64)
        return torch.where(local[:, -1] > 0, handles, torch.full_like(handles, -1))

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        out = self._values[row_ids.clamp(min=0)]
        out[row_ids < 0] = 0.0
        return out

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        """Collective. Sends each handle's gradient to its owner, which steps once per row."""
        if self._route is None:
            raise RuntimeError("update() without a preceding lookup()")
        order, send_counts, recv_counts, owned_rows = self._route
        full = torch.zeros((len(order), self.dim), dtype=grads.dtype)
        valid = row_ids >= 0
        full[row_ids[valid]] = grads[valid]
        received, _ = _exchange(full[order], send_counts, self.group, recv_counts)
        # Each rank's objective carries world / global count (see
        # OnlineTrainer._step): the average over ranks is the global batch's
        # gradient, whatever the slices' sizes.
        received = received / self.world
        unique_rows, inverse = torch.unique(owned_rows, return_inverse=True)
        summed = torch.zeros((unique_rows.numel(), self.dim), dtype=grads.dtype)
        summed.index_add_(0, inverse, received)
        self.shard.update(unique_rows, summed, lr=lr)
        self._route = None

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        # OnlineTrainer refuses history features with distributed tables
        # (ConfigError) before this can be reached.
        raise RuntimeError("set_rows is not collective: history features run single-rank")

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

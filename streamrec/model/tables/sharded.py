"""A table split by id across N :class:`DynamicEmbeddingTable` shards.

Each id lives in exactly one shard, chosen by a hash of the id that is
independent of the index's slot hash. A global row id encodes both:
``global = local * N + shard``, so the trainer handles one row tensor per
table whatever the shard count. In one process this bounds each shard's
rehash and sweep cost; across processes each torch.distributed rank owns the
shards ``shard % world_size == rank``.
"""

from __future__ import annotations

import dataclasses

import torch

from streamrec.config import TableConfig
from streamrec.model.records import EvictedIds, TableDelta, UpsertedRows
from streamrec.model.tables.rows import SWEEP_ROWS, TableStats
from streamrec.model.tables.store import SingleTableStore
from streamrec.model.tables.table import DynamicEmbeddingTable

__all__ = ["ShardedEmbeddingTable", "shard_of"]

_SHARD_MULT = 0x2545F4914F6CDD1D


def shard_of(ids: torch.Tensor, shards: int) -> torch.Tensor:
    """The shard of each id: a mixing hash of the id, modulo ``shards``."""
    if shards == 1:
        return torch.zeros_like(ids)
    return ((ids * _SHARD_MULT) >> 33).remainder(shards)


class ShardedEmbeddingTable:
    """Same interface as :class:`DynamicEmbeddingTable`, over ``config.shards`` shards.

    Its store is a store of one (this table).
    """

    tag = 0

    def __init__(self, name: str, dim: int, config: TableConfig, seed: int = 0) -> None:
        self.name = name
        self.dim = dim
        self.config = config
        self.n = config.shards
        self.store = SingleTableStore(self)
        # Capacity settings are table-wide; each shard gets its share. (So a
        # bounded table may refuse ids a little before max_rows when ids do
        # not hash evenly: each shard is full at max_rows // shards.)
        per_shard = dataclasses.replace(
            config, shards=1,
            max_rows=max(1, config.max_rows // self.n) if config.max_rows else 0,
            initial_capacity=max(16, config.initial_capacity // self.n),
        )
        self.shards = [DynamicEmbeddingTable(f"{name}/{s}", dim, per_shard, seed=seed)
                       for s in range(self.n)]

    @property
    def shard_count(self) -> int:
        return self.n

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def stats(self) -> TableStats:
        total = TableStats()
        for field in TableStats.__slots__:
            setattr(total, field, sum(getattr(s.stats, field) for s in self.shards))
        return total

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.shards)

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        owner = shard_of(ids, self.n)
        rows = torch.full_like(ids, -1)
        for s, shard in enumerate(self.shards):
            mine = owner == s
            if not bool(mine.any()):
                continue
            local = shard.lookup(ids[mine], None if counts is None else counts[mine],
                                 now_ms=now_ms, train=train)
            rows[mine] = torch.where(local >= 0, local * self.n + s, local)
        return rows

    def _split(self, rows: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(shard, positions, local row ids)`` for each shard that row ids ``rows`` touch."""
        valid = rows >= 0
        owner = torch.where(valid, rows.remainder(self.n), torch.full_like(rows, -1))
        parts = []
        for s in range(self.n):
            pos = torch.nonzero(owner == s).reshape(-1)
            if pos.numel():
                parts.append((s, pos, rows[pos] // self.n))
        return parts

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((row_ids.numel(), self.dim), dtype=torch.float32)
        for s, pos, local in self._split(row_ids):
            out[pos] = self.shards[s].read(local)
        return out

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        for s, pos, local in self._split(row_ids):
            self.shards[s].update(local, grads[pos], lr)

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        for s, pos, local in self._split(row_ids):
            self.shards[s].set_rows(local, values[pos])

    def expire(self, now_ms: int, max_rows: int = SWEEP_ROWS,
               prune_below: float | None = None) -> int:
        return sum(s.expire(now_ms, max(1, max_rows // self.n), prune_below)
                   for s in self.shards)

    def keep_evicted_ids(self, enabled: bool) -> None:
        for shard in self.shards:
            shard.keep_evicted_ids(enabled)

    def clear(self) -> None:
        for shard in self.shards:
            shard.clear()

    def _joined(self, parts: list[TableDelta]) -> TableDelta:
        return TableDelta(self.name, self.dim, UpsertedRows(
            torch.cat([p.upserted.ids for p in parts]),
            torch.cat([p.upserted.values for p in parts])),
            EvictedIds(torch.cat([p.evicted.ids for p in parts])))

    def collect_delta(self) -> TableDelta:
        return self._joined([s.collect_delta() for s in self.shards])

    def export_all(self) -> TableDelta:
        return self._joined([s.export_all() for s in self.shards])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"shard{s}.{k}": v for s, shard in enumerate(self.shards)
                for k, v in shard.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = saved_shards(state)
        if saved != self.n:
            # Fewer shards would silently leave the other shards' rows behind.
            raise ValueError(shard_mismatch(self.name, saved, self.n))
        for s, shard in enumerate(self.shards):
            prefix = f"shard{s}."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise ValueError(f"table {self.name}: checkpoint has no state for shard {s} "
                                 f"(was it saved with a different shard count?)")
            shard.load_state_dict(part)


def saved_shards(state: dict[str, torch.Tensor]) -> int:
    """How many shards a table's :meth:`state_dict` holds (1: an unsharded table's)."""
    return len({key.split(".", 1)[0] for key in state if key.startswith("shard")}) or 1


def shard_mismatch(name: str, saved: int, configured: int) -> str:
    return (f"table {name}: the checkpoint has {saved} shard(s), the config {configured} "
            f"(tables.{name}.shards or table_defaults.shards); rows cannot move between "
            f"shard counts")

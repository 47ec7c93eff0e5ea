"""The interface every embedding table implementation provides.

The conformance suite in tests/unit/test_table_conformance.py runs against each
implementation; a new one (e.g. a torch.distributed-backed table) joins it there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch

from streamrec.config import TableConfig
from streamrec.model.tables.group import TableGroup, group_views
from streamrec.model.tables.sharded import ShardedEmbeddingTable
from streamrec.model.tables.rows import _SWEEP_ROWS, TableStats
from streamrec.model.tables.table import DynamicEmbeddingTable

__all__ = ["EmbeddingTable", "expire_tables", "make_table", "make_tables"]


@runtime_checkable
class EmbeddingTable(Protocol):
    """A dynamic table keyed by raw int64 ids (see DynamicEmbeddingTable for semantics)."""

    name: str
    dim: int

    def __len__(self) -> int: ...
    @property
    def stats(self) -> TableStats: ...
    def memory_bytes(self) -> int: ...
    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor: ...
    def read(self, rows: torch.Tensor) -> torch.Tensor: ...
    def update(self, rows: torch.Tensor, grads: torch.Tensor, lr: float | None = None) -> None: ...
    def set_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None: ...
    def expire(self, now_ms: int, max_rows: int = ...,
               prune_below: float | None = None) -> int: ...
    def collect_delta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def export_all(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def make_table(name: str, dim: int, config: TableConfig, seed: int = 0) -> EmbeddingTable:
    """The table implementation for ``config``: sharded when ``config.shards > 1``."""
    if config.shards > 1:
        return ShardedEmbeddingTable(name, dim, config, seed=seed)
    return DynamicEmbeddingTable(name, dim, config, seed=seed)


def make_tables(names: list[str], dim: int, config_of: Callable[[str], TableConfig],
                seed: int = 0) -> dict[str, EmbeddingTable]:
    """Tables for ``names``; unsharded tables with equal configs share a :class:`TableGroup`.

    Grouped tables behave as separate tables (each is a view) but are looked
    up, updated and expired in one pass per step by the embedding collection.
    Sharded tables stay separate.
    """
    groups: dict[tuple[object, ...], list[str]] = {}
    tables: dict[str, EmbeddingTable] = {}
    for name in names:
        config = config_of(name)
        if config.shards > 1:
            tables[name] = make_table(name, dim, config, seed=seed)
        else:
            groups.setdefault(dataclasses.astuple(config), []).append(name)
    for members in groups.values():
        group = TableGroup(members, dim, config_of(members[0]), seed=seed)
        tables.update(group.views)
    return {name: tables[name] for name in names}


def expire_tables(tables: Mapping[str, EmbeddingTable], now_ms: int,
                  prune_below: Callable[[str], float | None] = lambda _: None) -> int:
    """One bounded slice of every table's expiry/pruning sweep; returns rows freed.

    Views of one TableGroup are swept together, once, with the per-table
    budget for each of the group's tables; other tables one by one.
    ``prune_below(name)`` is a table's OptEmbed threshold (None: no pruning).
    """
    groups, single = group_views(tables)
    freed = 0
    for group, _ in groups:
        limits = torch.tensor([prune_below(name) or float("nan") for name in group.names])
        freed += group.expire(now_ms, _SWEEP_ROWS * len(group.names), limits)
    for name in single:
        freed += tables[name].expire(now_ms, prune_below=prune_below(name))
    return freed

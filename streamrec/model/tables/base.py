"""Building tables from their configs: which implementation, which tables fused into one store."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import torch

from streamrec.config import TableConfig
from streamrec.model.tables.group import TableGroup
from streamrec.model.tables.sharded import ShardedEmbeddingTable
from streamrec.model.tables.rows import SWEEP_ROWS
from streamrec.model.tables.store import EmbeddingTable, stores_of
from streamrec.model.tables.table import DynamicEmbeddingTable

__all__ = ["EmbeddingTable", "expire_tables", "fused_stores", "make_table", "make_tables"]

log = logging.getLogger(__name__)


def make_table(name: str, dim: int, config: TableConfig, seed: int = 0) -> EmbeddingTable:
    """The table implementation for ``config``: sharded when ``config.shards > 1``."""
    if config.shards > 1:
        return ShardedEmbeddingTable(name, dim, config, seed=seed)
    return DynamicEmbeddingTable(name, dim, config, seed=seed)


def fused_stores(names: list[str], config_of: Callable[[str], TableConfig]
                 ) -> list[list[str]]:
    """The tables of ``names`` that :func:`make_tables` puts in one store, per store.

    Unsharded tables with equal configs are fused (one
    :class:`~streamrec.model.tables.group.TableGroup`: looked up, updated and
    expired in one pass per step); a sharded table is a store of its own.
    Tables keep their own rows either way: fusion changes speed, not results.
    """
    stores: dict[object, list[str]] = {}
    for name in names:
        config = config_of(name)
        # (Which features look a table up is no part of how its rows behave.)
        key: object = ("sharded", name) if config.shards > 1 else tuple(
            getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "features")
        stores.setdefault(key, []).append(name)
    return list(stores.values())


def make_tables(names: list[str], dim: int, config_of: Callable[[str], TableConfig],
                seed: int = 0) -> dict[str, EmbeddingTable]:
    """Tables for ``names``, fused into stores as :func:`fused_stores` says (and logged)."""
    tables: dict[str, EmbeddingTable] = {}
    for members in fused_stores(names, config_of):
        config = config_of(members[0])
        if config.shards > 1:
            tables[members[0]] = make_table(members[0], dim, config, seed=seed)
            continue
        if len(members) > 1:
            named = ", ".join(members[:8]) + (f" and {len(members) - 8} more"
                                              if len(members) > 8 else "")
            log.info("%d tables (%s) share a config: fused into one store", len(members), named)
        group = TableGroup(members, dim, config, seed=seed)
        tables.update(group.views)
    return {name: tables[name] for name in names}


def expire_tables(tables: Mapping[str, EmbeddingTable], now_ms: int,
                  prune_below: Callable[[str], float | None] = lambda _: None) -> int:
    """One bounded slice of every store's expiry/pruning sweep; returns rows freed.

    Each store is swept once, with the per-table budget for each table it
    holds. ``prune_below(name)`` is a table's OptEmbed threshold (None: no pruning).
    """
    freed = 0
    for store, _ in stores_of(tables):
        limits = torch.tensor([prune_below(name) or float("nan") for name in store.names])
        freed += store.expire(now_ms, SWEEP_ROWS * len(store.names), limits)
    return freed

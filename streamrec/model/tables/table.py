"""A dynamic embedding table: collisionless, frequency-filtered, expirable.

Rows are keyed by raw int64 ids (no hashing collisions); an id gets a row once
the frequency filter has seen it ``min_count`` times (Monolith §3.2.1); rows
unseen for ``ttl_s`` of event time are evicted by a sweep of a bounded slice
per step. docs/tables.md describes the semantics.
"""

from __future__ import annotations

import dataclasses

from streamrec.config import TableConfig
from streamrec.model.tables.group import GroupTableView, TableGroup

__all__ = ["DynamicEmbeddingTable"]


class DynamicEmbeddingTable(GroupTableView):
    """One embedding table keyed by raw int64 ids, with storage of its own.

    Row ids returned by :meth:`lookup` index :meth:`read` and
    :meth:`update`; -1 stands for "no row" (an id not admitted yet), which reads
    as zeros and takes no update. Not thread-safe: the trainer serialises calls.

    Its store is a :class:`~streamrec.model.tables.group.TableGroup` of one
    table, so there is one implementation of the table semantics: sharded and
    distributed tables are built from these. ``config.shards`` is not looked
    at here (a shard is one table).
    """

    def __init__(self, name: str, dim: int, config: TableConfig, seed: int = 0) -> None:
        group = TableGroup([name], dim, dataclasses.replace(config, shards=1), seed=seed)
        super().__init__(group, name)
        group.views[name] = self

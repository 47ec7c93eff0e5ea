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

import dataclasses

from streamrec.config import TableConfig
from streamrec.model.tables.group import GroupTableView, TableGroup

__all__ = ["DynamicEmbeddingTable"]


class DynamicEmbeddingTable(GroupTableView):
    """One embedding table keyed by raw int64 ids, with storage of its own.

    Row numbers returned by :meth:`lookup` index :meth:`read` and
    :meth:`update`; -1 stands for "no row" (an id not admitted yet), which reads
    as zeros and takes no update. Not thread-safe: the trainer serialises calls.

    It is a :class:`~streamrec.model.tables.group.TableGroup` of one table, so there is
    one implementation of the table semantics: ``make_tables`` puts the tables
    of features that share a config in one group instead, and sharded and
    distributed tables are built from these. ``config.shards`` is not looked
    at here (a shard is one table).
    """

    def __init__(self, name: str, dim: int, config: TableConfig, seed: int = 0) -> None:
        group = TableGroup([name], dim, dataclasses.replace(config, shards=1), seed=seed)
        super().__init__(group, name)
        group.views[name] = self

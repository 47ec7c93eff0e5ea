"""Dynamic embedding tables: collisionless, frequency-filtered, expirable, prunable, sharded."""

from trainer.tables.base import EmbeddingTable, make_table, make_tables
from trainer.tables.distributed import DistributedEmbeddingTable
from trainer.tables.filter import FrequencyFilter
from trainer.tables.group import GroupTableView, TableGroup
from trainer.tables.index import IdIndex
from trainer.tables.sharded import ShardedEmbeddingTable, shard_of
from trainer.tables.rows import TableStats, id_normal
from trainer.tables.table import DynamicEmbeddingTable

__all__ = [
    "EmbeddingTable",
    "make_table",
    "make_tables",
    "GroupTableView",
    "TableGroup",
    "FrequencyFilter",
    "IdIndex",
    "DynamicEmbeddingTable",
    "DistributedEmbeddingTable",
    "ShardedEmbeddingTable",
    "TableStats",
    "shard_of",
    "id_normal",
]

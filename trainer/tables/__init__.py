"""Dynamic embedding tables: collisionless, frequency-filtered, expirable, prunable, sharded."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "EmbeddingTable": "streamrec.trainer.tables.base",
    "make_table": "streamrec.trainer.tables.base",
    "make_tables": "streamrec.trainer.tables.base",
    "GroupTableView": "streamrec.trainer.tables.group",
    "TableGroup": "streamrec.trainer.tables.group",
    "FrequencyFilter": "streamrec.trainer.tables.filter",
    "IdIndex": "streamrec.trainer.tables.index",
    "DynamicEmbeddingTable": "streamrec.trainer.tables.table",
    "DistributedEmbeddingTable": "streamrec.trainer.tables.distributed",
    "ShardedEmbeddingTable": "streamrec.trainer.tables.sharded",
    "TableStats": "streamrec.trainer.tables.rows",
    "shard_of": "streamrec.trainer.tables.sharded",
    "id_normal": "streamrec.trainer.tables.rows",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

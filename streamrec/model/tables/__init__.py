"""Dynamic embedding tables: collisionless, frequency-filtered, expirable, prunable, sharded."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "EmbeddingTable": "streamrec.model.tables.store",
    "make_table": "streamrec.model.tables.base",
    "make_tables": "streamrec.model.tables.base",
    "fused_stores": "streamrec.model.tables.base",
    "SingleTableStore": "streamrec.model.tables.store",
    "TableStore": "streamrec.model.tables.store",
    "stores_of": "streamrec.model.tables.store",
    "GroupTableView": "streamrec.model.tables.group",
    "TableGroup": "streamrec.model.tables.group",
    "FrequencyFilter": "streamrec.model.tables.filter",
    "IdIndex": "streamrec.model.tables.index",
    "DynamicEmbeddingTable": "streamrec.model.tables.table",
    "DistributedEmbeddingTable": "streamrec.model.tables.distributed",
    "ShardedEmbeddingTable": "streamrec.model.tables.sharded",
    "TableStats": "streamrec.model.tables.rows",
    "shard_of": "streamrec.model.tables.sharded",
    "id_normal": "streamrec.model.tables.rows",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

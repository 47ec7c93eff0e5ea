"""The model, shared by training and serving: dynamic embedding tables, the
embedding collection, history features, the dense CTR model, the parameter codec."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "CTRModel": "streamrec.model.ctr",
    "model_from_spec": "streamrec.model.ctr",
    "DynamicEmbeddingCollection": "streamrec.model.embedding",
    "HistoryFeatures": "streamrec.model.history",
    "ParameterDelta": "streamrec.model.delta",
    "TableDelta": "streamrec.model.records",
    "UpsertedRows": "streamrec.model.records",
    "EvictedIds": "streamrec.model.records",
    "DenseParameters": "streamrec.model.records",
    "encode_chunks": "streamrec.model.delta",
    "decode_chunks": "streamrec.model.delta",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

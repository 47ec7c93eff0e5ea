"""Parameter sync: versioned deltas from the trainer to serving replicas."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "ParameterDelta": "streamrec.trainer.sync.delta",
    "TableDelta": "streamrec.trainer.sync.delta",
    "encode_chunks": "streamrec.trainer.sync.delta",
    "decode_chunks": "streamrec.trainer.sync.delta",
    "Publisher": "streamrec.trainer.sync.publisher",
    "ParameterSource": "streamrec.trainer.sync.publisher",
    "DeltaSink": "streamrec.trainer.sync.sink",
    "GrpcDeltaSink": "streamrec.trainer.sync.sink",
    "MemoryDeltaSink": "streamrec.trainer.sync.sink",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

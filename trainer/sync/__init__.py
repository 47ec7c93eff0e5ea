"""Parameter sync: the publisher of versioned deltas and the sinks that carry them
(the delta codec is :mod:`streamrec.model.delta`)."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "Publisher": "streamrec.trainer.sync.publisher",
    "ParameterSource": "streamrec.trainer.sync.publisher",
    "DeltaSink": "streamrec.trainer.sync.sink",
    "GrpcDeltaSink": "streamrec.trainer.sync.sink",
    "MemoryDeltaSink": "streamrec.trainer.sync.sink",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

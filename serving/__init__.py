"""Serving replicas: parameters from the trainer in, CTR scores out over gRPC."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "ModelReplica": "streamrec.serving.replica",
    "ReplicaTableGroup": "streamrec.serving.replica",
    "RecommenderClient": "streamrec.serving.client",
    "Prediction": "streamrec.serving.client",
    "Recommendation": "streamrec.serving.client",
    "Servers": "streamrec.serving.server",
    "create_server": "streamrec.serving.server",
    "serve": "streamrec.serving.server",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

"""Serving replicas: parameters from the trainer in, CTR scores out over gRPC."""

from serving.client import Prediction, Recommendation, RecommenderClient
from serving.replica import EmbeddingTableReplica, ModelReplica
from serving.server import Servers, create_server, serve

__all__ = [
    "ModelReplica",
    "EmbeddingTableReplica",
    "RecommenderClient",
    "Prediction",
    "Recommendation",
    "Servers",
    "create_server",
    "serve",
]

"""Prometheus metrics of parameter sync (the trainer side)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SyncMetrics"]


class SyncMetrics:
    """Pushes by replica, kind and result; push latency; rows; versions. Registered on ``registry``."""

    def __init__(self, replicas: list[str], registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.pushes = Counter("streamrec_sync_pushes_total", "Parameter pushes to replicas",
                              ["replica", "kind", "result"], registry=registry)
        for replica in replicas:
            for kind in ("delta", "full"):
                for result in ("ok", "gap", "error"):
                    self.pushes.labels(replica, kind, result)
        self.push_seconds = Histogram(
            "streamrec_sync_push_seconds", "Wall time of one push to one replica",
            ["kind"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry)
        self.rows = Counter("streamrec_sync_rows_total", "Embedding rows sent (all replicas)",
                            ["kind"], registry=registry)
        self.version = Gauge("streamrec_sync_version", "Last parameter version published",
                             registry=registry)
        self.replica_version = Gauge("streamrec_sync_replica_version",
                                     "Parameter version each replica acknowledged",
                                     ["replica"], registry=registry)
        for replica in replicas:
            self.replica_version.labels(replica)

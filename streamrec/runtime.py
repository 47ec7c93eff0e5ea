"""Process-wide settings for streamrec's long-running processes."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from streamrec.errors import StreamrecError

__all__ = ["tune_gc", "serve_metrics", "kafka_unreachable"]


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve ``registry`` on ``http://host:port/metrics``; returns the port bound.

    A port in use or an address not on this machine is a usage error
    (:class:`StreamrecError` naming ``metrics.port``), not a traceback.
    """
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise StreamrecError(f"metrics.port {port} on {host!r}: {e.strerror or e}") from None
    return int(server.server_port)


def kafka_unreachable(servers: list[str], error: Exception) -> StreamrecError:
    """The error for a Kafka client that could not be built (no broker answered)."""
    return StreamrecError(f"cannot reach Kafka at {','.join(servers)}: {error}")


def tune_gc(young: int = 100_000) -> None:
    """Keep Python's cyclic garbage collector off the per-event path.

    Call once, after start-up (imports, model and tables built). A decoded
    event is a handful of container objects, so the collector's default
    thresholds run a young collection every ~70 events and, every 100 of
    those, a full one that walks all ~350k objects torch and its friends
    leave alive at import: ~30% of an ingest-bound training loop. Freezing
    the start-up objects takes them out of every later collection, and a
    larger young generation makes collections rare; refcounting still frees
    events as soon as they are batched, so memory does not grow.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 50, 100)

"""Process-wide settings for streamrec's long-running processes."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


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

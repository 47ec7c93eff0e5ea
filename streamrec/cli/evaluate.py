"""`streamrec evaluate`: replay an event file through the trainer, test-then-train.

Users compare configurations on their own logs with it: the same trainer, the
same joiner, no Kafka and no serving, one JSON object of results. Without a
configured feature list (model.sparse_features and model.dense_features both
unset) the model takes every feature of the file's first events
(:mod:`ingest.schema`), read once: the file may be a pipe.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from streamrec.ingest.deadletter import MemoryDeadLetterSink
from streamrec.ingest.file_source import FileSource
from streamrec.ingest.schema import FeatureSchema, SchemaScan
from streamrec.ingest.source import EventSource, ForwardingSource, SourceBatch
from streamrec.config import AppConfig
from streamrec.trainer.loop import LoopStats, RecentRate
from streamrec.trainer.pipeline import build_pipeline

__all__ = ["evaluate", "DISCOVER_EVENTS"]

# Impressions and examples read to fix the schema when no feature list is configured.
DISCOVER_EVENTS = 10_000


def _finite_or_none(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


class _Replayed(ForwardingSource):
    """``source`` with the polls already taken from it (``head``) delivered first."""

    def __init__(self, head: list[SourceBatch], source: EventSource) -> None:
        super().__init__(source)
        self._head = deque(head)

    @property
    def exhausted(self) -> bool:
        return not self._head and self.source.exhausted

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        # The trainer's polls need not match the scan's: a held poll goes whole.
        return self._head.popleft() if self._head else self.source.poll(max_events, timeout_s)


def _discover(source: EventSource, events: int) -> tuple[FeatureSchema, list[SourceBatch]]:
    """The schema of ``source``'s first ``events`` impressions and examples, and the
    polls that carried them (to be trained on after)."""
    scan, polls = SchemaScan(), []
    while scan.events < events and not source.exhausted:
        got = source.poll(min(4096, events - scan.events), 0.0)
        scan.observe(got.events)
        polls.append(got)
    return scan.schema(), polls


def evaluate(config: AppConfig, path: str, progress: bool = True,
             discover_events: int = DISCOVER_EVENTS) -> dict[str, Any]:
    """Train on ``path`` test-then-train; returns the progressive metrics.

    Without a configured feature list, the features are those of the first
    ``discover_events`` impressions and examples (:mod:`ingest.schema`). The
    result's ``features`` says which the model read (``from``: ``stream`` or
    ``config``), the stream features it ignored (events carrying each), the
    model features no event carried and the dense features events gave a value
    other than one number (events, each).
    """
    if discover_events < 1:
        raise ValueError("discover_events must be >= 1")
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    ing = config.ingest
    file_source = FileSource(path, value_format=ing.value_format)
    try:
        source: EventSource = file_source
        features: dict[str, Any] = {"from": "config"}
        scan_seconds = 0.0
        if not config.model.features_configured:
            started = time.perf_counter()
            schema, head = _discover(file_source, discover_events)
            scan_seconds = time.perf_counter() - started
            source = _Replayed(head, file_source)
            config = replace(config, model=replace(
                config.model, sparse_features=list(schema.sparse),
                dense_features=list(schema.dense)))
            features = {"from": "stream", "scanned_events": schema.events,
                        "bags": list(schema.bags)}
            if progress:
                print(f"evaluate: features of the first {schema.events:,} impressions and "
                      f"examples: {schema.describe()}", file=sys.stderr, flush=True)
        pipeline = build_pipeline(config, source, dead_letters=MemoryDeadLetterSink(),
                                  on_progress=_reporter(progress), audit_after=discover_events)
        stats = pipeline.run()
    finally:
        file_source.close()
    audit = pipeline.audit
    audit.report_missing()
    p = stats.progress
    wall = stats.wall_seconds + scan_seconds  # the scan read (decoded) the first events
    features.update(sparse=list(config.model.sparse_features),
                    dense=list(config.model.dense_features),
                    ignored=dict(sorted(audit.ignored.items())),
                    never_seen=audit.never_carried(),
                    mistyped={f: n for f, n in audit.mistyped.items() if n})
    return {
        "events": stats.events,
        "examples": stats.examples,
        "positives": stats.positives,
        "dead_letters": stats.dead_letters,
        "auc": _finite_or_none(p.get("auc", math.nan)),
        "logloss": _finite_or_none(p.get("logloss", math.nan)),
        "events_per_second": round(stats.events / wall, 1) if wall > 0 else None,
        "wall_seconds": round(wall, 3),
        "features": features,
    }


def _reporter(progress: bool) -> Callable[[LoopStats], None] | None:
    """Progress lines on stderr, or none."""
    if not progress:
        return None
    rate = RecentRate()

    def report(stats: LoopStats) -> None:
        p = stats.progress
        print(f"evaluate: {stats.examples:,} examples, auc={p.get('auc', math.nan):.4f} "
              f"logloss={p.get('logloss', math.nan):.4f} "
              f"{rate.update(stats):,.0f} examples/s (since the last report)",
              file=sys.stderr, flush=True)

    return report

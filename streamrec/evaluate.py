"""`streamrec evaluate`: replay an event file through the trainer, test-then-train.

Users compare configurations on their own logs with it: the same trainer, the
same joiner, no Kafka and no serving, one JSON object of results.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from streamrec.ingest.deadletter import MemoryDeadLetterSink
from streamrec.ingest.file_source import FileSource
from streamrec.ingest.joiner import Joiner
from streamrec.config import AppConfig
from streamrec.trainer.loop import LoopStats, TrainingLoop
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["evaluate"]


def _finite_or_none(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def evaluate(config: AppConfig, path: str, progress: bool = True) -> dict[str, Any]:
    """Train on ``path`` test-then-train; returns the progressive metrics."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    trainer = OnlineTrainer(config)
    ing = config.ingest
    source = FileSource(path, value_format=ing.value_format)
    joiner = Joiner(ing.action_types, ing.join_window_s, ing.negative_sample_rate,
                    seed=config.trainer.seed, max_pending=ing.join_max_pending,
                    delayed_feedback=ing.delayed_feedback,
                    elapsed_s=ing.fake_negative_delay_s)

    def report(stats: LoopStats) -> None:
        if progress:
            p = stats.progress
            print(f"evaluate: {stats.examples:,} examples, auc={p.get('auc', math.nan):.4f} "
                  f"logloss={p.get('logloss', math.nan):.4f} "
                  f"{stats.examples_per_second:,.0f} examples/s", file=sys.stderr, flush=True)

    loop = TrainingLoop(trainer, source, joiner=joiner, dead_letters=MemoryDeadLetterSink(),
                        on_progress=report)
    try:
        stats = loop.run()
    finally:
        source.close()
    p = stats.progress
    return {
        "events": stats.events,
        "examples": stats.examples,
        "positives": stats.positives,
        "dead_letters": stats.dead_letters,
        "auc": _finite_or_none(p.get("auc", math.nan)),
        "logloss": _finite_or_none(p.get("logloss", math.nan)),
        "events_per_second": round(stats.events / stats.wall_seconds, 1)
        if stats.wall_seconds > 0 else None,
        "wall_seconds": round(stats.wall_seconds, 3),
    }

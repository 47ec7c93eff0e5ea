"""`streamrec train`: the production trainer process.

Kafka consumer group -> joiner -> online trainer -> parameter pushes to every
replica in ``sync.replicas``; checkpoints with offsets; /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import torch
from prometheus_client import REGISTRY

from streamrec.config import AppConfig
from streamrec.ingest.metrics import IngestMetrics
from streamrec.runtime import serve_metrics
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.loop import LoopStats, RecentRate
from streamrec.trainer.pipeline import build_pipeline, dead_letter_sink, open_source
from streamrec.trainer.sync.sink import GrpcDeltaSink

__all__ = ["run_training"]

log = logging.getLogger(__name__)


def run_training(config: AppConfig, stop: threading.Event,
                 max_seconds: float | None = None) -> LoopStats:
    """Run the Kafka trainer until ``stop`` is set."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    if config.metrics.port >= 0:
        port = serve_metrics(config.metrics.host, config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
    ingest_metrics = IngestMetrics(registry=REGISTRY)
    rate = RecentRate()

    def report(stats: LoopStats) -> None:  # (called by pipeline.run, once it is built)
        p = stats.progress
        log.info("examples=%d (%.0f/s since the last report) auc=%.4f logloss=%.4f rows=%s",
                 stats.examples, rate.update(stats), p.get("auc", float("nan")),
                 p.get("logloss", float("nan")), pipeline.trainer.table_rows())

    # Whatever was opened is closed on every way out (a refused resume, an
    # unreachable broker): the checkpoint directory's lock above all.
    with contextlib.ExitStack() as opened:
        checkpointer = Checkpointer(config.trainer.checkpoint_dir, exclusive=True) \
            if config.trainer.checkpoint_dir else None
        if checkpointer is not None:
            opened.callback(checkpointer.close)
        sinks = {addr: GrpcDeltaSink(addr, config.sync.token, config.sync.max_chunk_bytes,
                                     config.sync.timeout_s) for addr in config.sync.replicas}
        for sink in sinks.values():
            opened.callback(sink.close)
        dead_letters = dead_letter_sink(config, ingest_metrics)
        opened.callback(dead_letters.close)
        source = open_source(config, ingest_metrics)
        opened.callback(source.close)
        pipeline = build_pipeline(config, source, sinks=sinks, checkpointer=checkpointer,
                                  dead_letters=dead_letters, registry=REGISTRY,
                                  ingest_metrics=ingest_metrics, on_progress=report)
        opened.callback(pipeline.audit.report_missing)
        return pipeline.run(stop, max_seconds=max_seconds)

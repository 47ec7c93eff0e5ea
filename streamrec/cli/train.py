"""`streamrec train`: the production trainer process.

Kafka consumer group -> joiner -> online trainer -> parameter pushes to every
replica in ``sync.replicas``; checkpoints with offsets; /metrics. Under
torchrun, one trainer rank of several (docs/ranks.md).
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
from streamrec.trainer.ranks import Ranks, agree_on_checkpoint, rank_directory, \
    refuse_rank_directories
from streamrec.trainer.sync.sink import GrpcDeltaSink

__all__ = ["run_training"]

log = logging.getLogger(__name__)


def run_training(config: AppConfig, stop: threading.Event,
                 max_seconds: float | None = None) -> LoopStats:
    """Run the Kafka trainer until ``stop`` is set.

    Under torchrun (``WORLD_SIZE`` > 1) this process is one trainer rank
    (trainer.ranks, docs/ranks.md).
    """
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    ranks = Ranks.from_env()
    if config.metrics.port >= 0:
        # Each rank of a host serves its own /metrics, on the next port up.
        port = serve_metrics(config.metrics.host, config.metrics.port + (
            ranks.local_rank if ranks is not None and config.metrics.port else 0))
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
    if ranks is not None:
        ranks.join()
    ingest_metrics = IngestMetrics(registry=REGISTRY)
    rate = RecentRate()

    def report(stats: LoopStats) -> None:  # (called by pipeline.run, once it is built)
        p = stats.progress
        log.info("examples=%d (%.0f/s since the last report) auc=%.4f logloss=%.4f rows[%s]",
                 stats.examples, rate.update(stats), p.get("auc", float("nan")),
                 p.get("logloss", float("nan")), pipeline.trainer.rows_summary())

    # Whatever was opened is closed on every way out (a refused resume, an
    # unreachable broker): the checkpoint directory's lock above all.
    with contextlib.ExitStack() as opened:
        checkpointer = None
        if config.trainer.checkpoint_dir:
            if ranks is None:
                refuse_rank_directories(config.trainer.checkpoint_dir)
            checkpointer = Checkpointer(
                rank_directory(config.trainer.checkpoint_dir, ranks.rank) if ranks is not None
                else config.trainer.checkpoint_dir, exclusive=True)
            opened.callback(checkpointer.close)
            if ranks is not None:
                agree_on_checkpoint(checkpointer, ranks)
        # With ranks, rank 0 alone pushes (one stream of versions).
        replicas = config.sync.replicas if ranks is None or ranks.rank == 0 else []
        sinks = {addr: GrpcDeltaSink(addr, config.sync.token, config.sync.max_chunk_bytes,
                                     config.sync.timeout_s) for addr in replicas}
        for sink in sinks.values():
            opened.callback(sink.close)
        dead_letters = dead_letter_sink(config, ingest_metrics)
        opened.callback(dead_letters.close)
        source = open_source(config, ingest_metrics,
                             share=ranks.share if ranks is not None else None)
        opened.callback(source.close)
        pipeline = build_pipeline(config, source, sinks=sinks, checkpointer=checkpointer,
                                  dead_letters=dead_letters, registry=REGISTRY,
                                  ingest_metrics=ingest_metrics, on_progress=report,
                                  distributed=ranks is not None)
        opened.callback(pipeline.audit.report_missing)
        return pipeline.run(stop, max_seconds=max_seconds)

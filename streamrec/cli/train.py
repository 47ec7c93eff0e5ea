"""`streamrec train`: the production trainer process.

Kafka consumer group -> joiner -> online trainer -> parameter pushes to every
replica in ``sync.replicas``; checkpoints with offsets; /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import torch
from kafka.errors import KafkaError
from prometheus_client import REGISTRY

from streamrec.ingest.deadletter import DeadLetterSink, FileDeadLetterSink, KafkaDeadLetterSink, \
    MemoryDeadLetterSink
from streamrec.ingest.feature_audit import AuditedSource, FeatureAudit
from streamrec.ingest.file_source import FileSource
from streamrec.ingest.joiner import Joiner
from streamrec.ingest.kafka_source import KafkaSource
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import EventSource
from streamrec.config import AppConfig
from streamrec.errors import ConfigError
from streamrec.runtime import kafka_unreachable, serve_metrics
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.loop import LoopStats, RecentRate, TrainingLoop
from streamrec.trainer.metrics import TrainerMetrics
from streamrec.trainer.sync.publisher import Publisher
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["run_training"]

log = logging.getLogger(__name__)


def _dead_letter_sink(config: AppConfig, metrics: IngestMetrics) -> DeadLetterSink:
    ing = config.ingest
    if ing.dead_letter_topic:
        try:
            return KafkaDeadLetterSink(ing.bootstrap_servers, ing.dead_letter_topic,
                                       metrics=metrics)
        except KafkaError as e:
            raise kafka_unreachable(ing.bootstrap_servers, e) from None
    if ing.dead_letter_path:
        return FileDeadLetterSink(ing.dead_letter_path)
    return MemoryDeadLetterSink()


def run_training(config: AppConfig, stop: threading.Event,
                 max_seconds: float | None = None) -> LoopStats:
    """Run the Kafka trainer until ``stop`` is set."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    if config.metrics.port >= 0:
        port = serve_metrics(config.metrics.host, config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
    trainer = OnlineTrainer(config)
    metrics = TrainerMetrics(trainer, registry=REGISTRY)
    ing = config.ingest
    ingest_metrics = IngestMetrics(registry=REGISTRY)
    joiner = Joiner(ing.action_types, ing.join_window_s, ing.negative_sample_rate,
                    seed=config.trainer.seed, max_pending=ing.join_max_pending,
                    delayed_feedback=ing.delayed_feedback,
                    elapsed_s=ing.fake_negative_delay_s,
                    metrics=ingest_metrics)
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
        dead_letters = _dead_letter_sink(config, ingest_metrics)
        opened.callback(dead_letters.close)
        if ing.source == "file":
            source: EventSource = FileSource(ing.path, ing.value_format, metrics=ingest_metrics)
        elif ing.source == "kafka":
            try:
                source = KafkaSource(ing, metrics=ingest_metrics)
            except KafkaError as e:  # no broker answered: a usage error, not a traceback
                raise kafka_unreachable(ing.bootstrap_servers, e) from None
        else:
            raise ConfigError(
                f"ingest.source={ing.source!r}: `streamrec train` reads kafka or file")
        # Reports stream features the model ignores and model features never carried.
        source = AuditedSource(source, FeatureAudit(
            config.model.sparse_features, config.model.dense_features, ingest_metrics))
        opened.callback(source.close)

        rate = RecentRate()

        def report(stats: LoopStats) -> None:
            p = stats.progress
            log.info("examples=%d (%.0f/s since the last report) auc=%.4f logloss=%.4f rows=%s",
                     stats.examples, rate.update(stats), p.get("auc", float("nan")),
                     p.get("logloss", float("nan")), trainer.table_rows())

        loop = TrainingLoop(trainer, source, joiner=joiner, dead_letters=dead_letters,
                            checkpointer=checkpointer, metrics=metrics, on_progress=report)
        version = loop.resume()
        loop.publisher = Publisher(trainer, sinks, config.sync.interval_s, registry=REGISTRY,
                                   start_version=version,
                                   min_interval_s=config.sync.min_interval_s) if sinks else None
        trainer.keep_evicted_ids(bool(sinks))  # every replica starts from a full snapshot
        return loop.run(stop, max_seconds=max_seconds)

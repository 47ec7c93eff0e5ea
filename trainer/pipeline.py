"""The training pipeline: source -> joiner -> batcher -> trainer -> publisher, from one config.

`streamrec train`, `evaluate` and `demo` each build theirs with
:func:`build_pipeline`; they differ only in what they pass: the event source,
the replicas' delta sinks, a checkpointer, a dead-letter sink, a registry.
A trainer rank (``distributed=True``) gets a :class:`RankLoop` (docs/ranks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch.distributed as dist
from prometheus_client import CollectorRegistry

from streamrec.config import AppConfig, IngestConfig
from streamrec.errors import ConfigError
from streamrec.ingest.deadletter import DeadLetterSink, FileDeadLetterSink, \
    KafkaDeadLetterSink, MemoryDeadLetterSink
from streamrec.ingest.feature_audit import AuditedSource, FeatureAudit
from streamrec.ingest.joiner import Joiner
from streamrec.ingest.kafka_security import client_security
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.prefetch import PrefetchingSource
from streamrec.ingest.source import EventSource
from streamrec.runtime import kafka_unreachable
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.loop import LoopStats, TrainingLoop
from streamrec.trainer.metrics import TrainerMetrics
from streamrec.trainer.parameters import TrainerParameters
from streamrec.trainer.quality import QualityMetrics
from streamrec.trainer.rank_loop import RankLoop
from streamrec.trainer.sync.publisher import ParameterSource, Publisher
from streamrec.trainer.sync.sink import DeltaSink
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["Pipeline", "build_pipeline", "open_source", "dead_letter_sink", "joiner_from_config"]

# What an event source must offer (ingest.source.EventSource).
_SOURCE_MEMBERS = ("poll", "commit", "seek", "close", "exhausted")


@dataclass
class Pipeline:
    """One training run's parts, wired: :meth:`run` drives them."""

    config: AppConfig
    trainer: OnlineTrainer
    quality: QualityMetrics  # progressive metrics and what replicas served
    joiner: Joiner
    audit: FeatureAudit  # the stream's features against the model's
    loop: TrainingLoop
    publisher: Publisher | None  # None without replicas
    metrics: TrainerMetrics | None  # None without a registry
    version: int  # the parameter version resumed from (0: a fresh start)

    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None,
            max_events: int | None = None) -> LoopStats:
        """Train until ``stop`` is set, the source is exhausted or a limit is reached."""
        return self.loop.run(stop, max_events=max_events, max_seconds=max_seconds)


def joiner_from_config(ingest: IngestConfig, seed: int,
                       metrics: IngestMetrics | None = None) -> Joiner:
    """The impression/action joiner ``ingest`` describes."""
    return Joiner(ingest.action_types, ingest.join_window_s, ingest.negative_sample_rate,
                  seed=seed, max_pending=ingest.join_max_pending,
                  max_clock_skew_s=ingest.max_clock_skew_s,
                  delayed_feedback=ingest.delayed_feedback,
                  elapsed_s=ingest.fake_negative_delay_s, metrics=metrics)


def build_pipeline(config: AppConfig, source: EventSource, *,
                   sinks: Mapping[str, DeltaSink] | None = None,
                   checkpointer: Checkpointer | None = None,
                   dead_letters: DeadLetterSink | None = None,
                   registry: CollectorRegistry | None = None,
                   ingest_metrics: IngestMetrics | None = None,
                   on_progress: Callable[[LoopStats], None] | None = None,
                   audit_after: int = 10_000,
                   distributed: bool = False,
                   process_group: dist.ProcessGroup | None = None) -> Pipeline:
    """Wire ``source`` through a joiner and batcher into a trainer publishing to ``sinks``.

    Args:
        config: the whole run's config (model, tables, trainer, ingest, sync).
        source: the events; a rank of a distributed trainer passes its own
            (its partitions of the topic).
        sinks: the replicas to publish to, by name; none: no publisher, and
            the trainer keeps no evicted ids for deltas.
        checkpointer: resumes from its newest checkpoint (the publisher then
            continues from that version) and writes the next ones.
        dead_letters: where malformed events go (default: dropped, counted).
        registry: where the trainer's metrics go (default: none kept).
        ingest_metrics: the joiner's, audit's and schema's metrics.
        on_progress: called every ``trainer.log_interval_s`` with the loop's stats.
        audit_after: events after which a model feature never seen is logged.
        distributed, process_group: see :class:`OnlineTrainer`; this process
            is one trainer rank, stepping in lockstep with the others
            (:class:`RankLoop`). Every rank gathers its rows for rank 0's
            publisher when ``config.sync.replicas`` lists replicas; rank 0
            alone passes ``sinks``.

    Raises:
        TypeError: ``source`` is not an event source or ``sinks`` not a mapping.
        ValueError: ``distributed`` with ``sinks`` but no ``config.sync.replicas``.
        RuntimeError: ``distributed`` without an initialised torch.distributed.
        CheckpointError: the newest checkpoint cannot be resumed from.
    """
    missing = [m for m in _SOURCE_MEMBERS if not hasattr(source, m)]
    if missing:
        raise TypeError(f"source: a {type(source).__name__} is not an event source "
                        f"(it lacks {', '.join(missing)})")
    if sinks is not None and not isinstance(sinks, Mapping):
        raise TypeError(f"sinks: a mapping of replica name to delta sink, not a "
                        f"{type(sinks).__name__}")
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True: torch.distributed is not initialised "
                           "(start every rank under torchrun and call init_process_group)")
    if distributed and sinks and not config.sync.replicas:
        raise ValueError("sinks with distributed=True: list the replicas in sync.replicas too "
                         "(every rank takes part in gathering what rank 0 publishes)")
    trainer = OnlineTrainer.from_config(config, distributed=distributed,
                                        process_group=process_group)
    quality = QualityMetrics()
    metrics = TrainerMetrics(trainer, quality, registry) if registry is not None else None
    joiner = joiner_from_config(config.ingest, config.trainer.seed, ingest_metrics)
    audit = FeatureAudit(config.model.sparse_features, config.model.dense_features,
                         ingest_metrics, report_after=audit_after)
    loop = (RankLoop if distributed else TrainingLoop)(
        trainer, AuditedSource(source, audit), config, quality=quality, joiner=joiner,
        dead_letters=dead_letters, checkpointer=checkpointer, metrics=metrics,
        on_progress=on_progress)
    version = loop.resume()

    def publisher_of(parameters: ParameterSource) -> Publisher:
        return Publisher(parameters, dict(sinks or {}), config.sync.interval_s,
                         registry=registry if registry is not None else CollectorRegistry(),
                         start_version=version, min_interval_s=config.sync.min_interval_s)

    if isinstance(loop, RankLoop):
        publishing = bool(config.sync.replicas)
        # Evicted ids matter only to replicas (every one starts from a full snapshot).
        trainer.keep_evicted_ids(publishing)
        if publishing:
            loop.publish_with(publisher_of if sinks else None)
    else:
        loop.publisher = publisher_of(TrainerParameters(trainer)) if sinks else None
        trainer.keep_evicted_ids(loop.publisher is not None)
    publisher = loop.publisher
    return Pipeline(config, trainer, quality, joiner, audit, loop, publisher, metrics, version)


def open_source(config: AppConfig, metrics: IngestMetrics | None = None,
                share: tuple[int, int] | None = None) -> EventSource:
    """The event source ``config.ingest`` names: a Kafka consumer group or a file.

    ``share=(rank, world)``: a trainer rank's fixed share of the Kafka
    partitions instead of the group's (``KafkaSource``), read ahead on a
    thread of its own (``PrefetchingSource``: a rank waits for the others at
    every step, and reads meanwhile); a file is refused.
    """
    ing = config.ingest
    if ing.source == "file" and share is None:
        from streamrec.ingest.file_source import FileSource

        return FileSource(ing.path, ing.value_format, metrics=metrics)
    if ing.source == "kafka":
        from kafka.errors import KafkaError

        from streamrec.ingest.kafka_source import KafkaSource

        try:
            source = KafkaSource(ing, metrics=metrics, share=share)
        except KafkaError as e:  # no broker answered: a usage error, not a traceback
            raise kafka_unreachable(ing.bootstrap_servers, e) from None
        # (Not for the group's rebalancing: a batch read ahead could hold
        # records of a partition moved to another consumer since.)
        return source if share is None else PrefetchingSource(source)
    if share is not None:
        raise ConfigError(f"ingest.source={ing.source!r}: trainer ranks read kafka (each "
                          f"rank its share of the partitions)")
    raise ConfigError(f"ingest.source={ing.source!r}: `streamrec train` reads kafka or file")


def dead_letter_sink(config: AppConfig, metrics: IngestMetrics | None = None) -> DeadLetterSink:
    """The dead-letter sink ``config.ingest`` names: a Kafka topic, a file, or memory."""
    ing = config.ingest
    if ing.dead_letter_topic:
        from kafka.errors import KafkaError

        try:
            return KafkaDeadLetterSink(ing.bootstrap_servers, ing.dead_letter_topic,
                                       metrics=metrics, security=client_security(ing))
        except KafkaError as e:
            raise kafka_unreachable(ing.bootstrap_servers, e) from None
    if ing.dead_letter_path:
        return FileDeadLetterSink(ing.dead_letter_path)
    return MemoryDeadLetterSink()

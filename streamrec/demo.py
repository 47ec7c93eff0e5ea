"""`streamrec demo`: the whole loop in one process, no Kafka needed.

A synthetic event stream in production form (impressions, and clicks seconds
later) feeds the online trainer through the joiner; each impression carries the
score the serving replica gave it (``served_score``, ``model_version``), so the
trainer reports what serving showed. The trainer pushes parameter deltas over
real gRPC to the replica it started on localhost; the demo queries that replica
and prints one line every few seconds. The trainer and the replica each expose
their own /metrics endpoint.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from collections.abc import Mapping
from typing import TextIO

from prometheus_client import CollectorRegistry

from streamrec.ingest.event import IMPRESSION
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.joiner import Joiner
from streamrec.ingest.source import SourceBatch
from streamrec.client import RecommenderClient
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import create_server
from streamrec.config import AppConfig, TableConfig
from streamrec.errors import NotReadyError
from streamrec.runtime import serve_metrics
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.loop import LoopStats, TrainingLoop
from streamrec.trainer.metrics import TrainerMetrics
from streamrec.trainer.sync.publisher import Publisher
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["run_demo", "DemoSummary", "demo_config"]


@dataclass
class DemoSummary:
    stats: LoopStats
    serving_version: int
    trainer_metrics_url: str
    serving_metrics_url: str


def demo_config(config: AppConfig) -> AppConfig:
    """The demo's model reads the synthetic stream's side features.

    Unless the user configured tables, the demo turns on the frequency filter
    and expiry (the stream carries 200 events per second of event time), so
    the table rows it prints level off while new ids keep arriving.
    """
    model = replace(config.model, sparse_features=["user_id", "item_id", "category", "country",
                                                   "hour"],
                    dense_features=["price"])
    tables = config.table_defaults
    if tables == TableConfig():
        tables = replace(tables, min_count=2, ttl_s=600.0)
    return replace(config, model=model, table_defaults=tables, tables={})


class _ServedSource:
    """The stream's impressions, each with the score the replica serves for it now.

    What an application does: log the score and the model version it showed.
    Before the replica has a model, impressions carry none.
    """

    def __init__(self, source: IteratorSource, replica: ModelReplica) -> None:
        self.source = source
        self.replica = replica

    @property
    def exhausted(self) -> bool:
        return self.source.exhausted

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        got = self.source.poll(max_events, timeout_s)
        at = [i for i, e in enumerate(got.events) if e.type == IMPRESSION]
        if not at:
            return got
        try:
            scores, version = self.replica.score_rows(
                [(got.events[i].user_id, got.events[i].item_id, got.events[i].features)
                 for i in at])
        except NotReadyError:
            return got
        events = list(got.events)
        for i, score in zip(at, scores):
            events[i] = events[i]._replace(served_score=score, model_version=version)
        return dataclasses.replace(got, events=events)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.source.commit(offsets)

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.source.seek(offsets)

    def close(self) -> None:
        self.source.close()


def _metrics_server(host: str, port: int, registry: CollectorRegistry) -> str:
    if port < 0:
        return ""
    return f"http://{host}:{serve_metrics(host, port, registry)}/metrics"


def run_demo(config: AppConfig, *, duration_s: float | None = None, rate: float | None = None,
             out: TextIO = sys.stdout, install_signal_handlers: bool = True) -> DemoSummary:
    """Run the demo until ``duration_s`` passes or Ctrl-C; returns what it measured."""
    config = demo_config(config)
    trainer_registry, serving_registry = CollectorRegistry(), CollectorRegistry()
    serving_cfg = replace(config.serving, port=0, sync_port=0)
    replica = ModelReplica(registry=serving_registry)
    servers = create_server(serving_cfg, replica, registry=serving_registry)
    servers.start()
    trainer = OnlineTrainer(config)
    metrics = TrainerMetrics(trainer, registry=trainer_registry)
    sink = GrpcDeltaSink(f"{serving_cfg.sync_host}:{servers.sync_port}", serving_cfg.token,
                         config.sync.max_chunk_bytes, config.sync.timeout_s)
    publisher = Publisher(trainer, {"replica-0": sink}, config.sync.interval_s,
                          registry=trainer_registry)
    port = config.metrics.port
    trainer_url = _metrics_server(config.metrics.host, port, trainer_registry)
    serving_url = _metrics_server(config.metrics.host, 0 if port >= 0 else -1, serving_registry)
    client = RecommenderClient(f"{serving_cfg.host}:{servers.port}", timeout_s=5.0)
    synthetic = default()
    stream = SyntheticStream(synthetic)
    source = _ServedSource(IteratorSource(stream.joined_events(10**12), rate=rate,
                                         name="synthetic"), replica)
    ing = config.ingest
    joiner = Joiner(ing.action_types, synthetic.join_window_s, seed=config.trainer.seed,
                    max_pending=ing.join_max_pending, delayed_feedback=ing.delayed_feedback,
                    elapsed_s=min(ing.fake_negative_delay_s, synthetic.join_window_s / 2))
    stop = threading.Event()
    candidates = list(range(1, 51))
    last = {"t": time.perf_counter(), "examples": 0, "version": 0}

    def on_progress(stats: LoopStats) -> None:
        now = time.perf_counter()
        window = now - last["t"]
        # The final report follows the last one closely: give the run's average
        # there rather than a rate over a near-empty window.
        rate_label, rate_now = ("events/s", (stats.examples - last["examples"]) / window) \
            if window >= 0.5 else ("events/s(avg)", stats.examples / max(1e-9, stats.wall_seconds))
        last.update(t=now, examples=stats.examples)
        try:
            served = client.predict(user_id=1, item_ids=candidates)
            version = served.model_version
        except Exception:  # not ready yet, or shutting down
            version = 0
        last["version"] = version
        staleness = replica.staleness_seconds()
        p = stats.progress
        rows = " ".join(f"{k}={v:,}" for k, v in trainer.table_rows().items())
        print(f"[{stats.wall_seconds:6.1f}s] {rate_label}={rate_now:,.0f} "
              f"examples={stats.examples:,} auc={p.get('auc', float('nan')):.4f} "
              f"(recent {p.get('window_auc', float('nan')):.4f}) "
              f"logloss={p.get('logloss', float('nan')):.4f} "
              f"calibration={p.get('calibration', float('nan')):.2f} "
              f"served_auc={trainer.replica.auc:.4f} rows[{rows}] "
              f"serving_version={version} staleness={staleness:.2f}s", file=out, flush=True)

    loop = TrainingLoop(trainer, source, joiner=joiner, publisher=publisher, metrics=metrics,
                        on_progress=on_progress)
    previous = {}
    if install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    print(f"streamrec demo: serving on 127.0.0.1:{servers.port} (sync {servers.sync_port}); "
          f"metrics: trainer {trainer_url or 'off'}, serving {serving_url or 'off'}; "
          f"Ctrl-C to stop", file=out, flush=True)
    try:
        stats = loop.run(stop, max_seconds=duration_s)  # reports once more as it ends
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
        sink.close()
        servers.stop(grace=1.0)
    return DemoSummary(stats=stats, serving_version=int(last["version"]),
                       trainer_metrics_url=trainer_url, serving_metrics_url=serving_url)

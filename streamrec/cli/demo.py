"""`streamrec demo`: the whole loop in one process, no Kafka needed.

A synthetic event stream in production form (impressions, and clicks seconds
later) feeds the online trainer through the joiner; each impression carries the
score the serving replica gave it (``served_score``, ``model_version``), so the
trainer reports what serving showed. The trainer pushes parameter deltas over
real gRPC to the replica it started on localhost; the demo queries that replica
and prints one line every few seconds. The trainer and the replica each expose
their own /metrics endpoint.
Every port is a parameter: 0 picks a free one (printed at start), -1 turns a
/metrics endpoint off.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import TextIO

from prometheus_client import CollectorRegistry

from streamrec.ingest.event import IMPRESSION
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.source import ForwardingSource, SourceBatch
from streamrec.client import RecommenderClient
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import create_server
from streamrec.config import AppConfig, TableConfig
from streamrec.errors import NotReadyError
from streamrec.runtime import serve_metrics
from streamrec.synthetic import SyntheticConfig, SyntheticStream, default
from streamrec.trainer.loop import LoopStats, RecentRate
from streamrec.trainer.pipeline import build_pipeline
from streamrec.trainer.sync.sink import GrpcDeltaSink

__all__ = ["run_demo", "DemoSummary", "demo_config"]

_UNBOUNDED_SKEW_S = 1e12  # (about 30,000 years)


@dataclass
class DemoSummary:
    stats: LoopStats
    serving_version: int
    trainer_metrics_url: str
    serving_metrics_url: str


def demo_config(config: AppConfig, stream: SyntheticConfig | None = None) -> AppConfig:
    """The demo's model reads the synthetic stream's side features.

    Unless the user configured tables, the demo turns on the frequency filter
    and expiry (the stream carries 200 events per second of event time), so
    the table rows it prints level off while new ids keep arriving. The
    joiner waits for clicks as long as ``stream`` sends them after an impression.
    """
    model = replace(config.model, sparse_features=["user_id", "item_id", "category", "country",
                                                   "hour"],
                    dense_features=["price"])
    tables = config.table_defaults
    if tables == TableConfig():
        tables = replace(tables, min_count=2, ttl_s=600.0)
    ingest = config.ingest
    if stream is not None:
        window = stream.join_window_s
        ingest = replace(ingest, join_window_s=window,
                         fake_negative_delay_s=min(ingest.fake_negative_delay_s, window / 2))
    return replace(config, ingest=ingest, model=model, table_defaults=tables, tables={})


class _ServedSource(ForwardingSource):
    """The stream's impressions, each with the score the replica serves for it now.

    What an application does: log the score and the model version it showed.
    Before the replica has a model, impressions carry none.
    """

    def __init__(self, source: IteratorSource, replica: ModelReplica) -> None:
        super().__init__(source)
        self.replica = replica

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


def _metrics_server(host: str, port: int, registry: CollectorRegistry) -> str:
    if port < 0:
        return ""
    return f"http://{host}:{serve_metrics(host, port, registry)}/metrics"


def serving_metrics_port(trainer_port: int) -> int:
    """The replica's default /metrics port: the trainer's + 1 (0 and -1 as the trainer's)."""
    return trainer_port + 1 if trainer_port > 0 else trainer_port


def run_demo(config: AppConfig, *, duration_s: float | None = None, rate: float | None = None,
             out: TextIO = sys.stdout, install_signal_handlers: bool = True,
             serving_port: int = 0, sync_port: int = 0,
             serving_metrics: int | None = None) -> DemoSummary:
    """Run the demo until ``duration_s`` passes or Ctrl-C; returns what it measured.

    The replica listens on ``serving_port`` and ``sync_port`` and serves its
    /metrics on ``serving_metrics`` (default :func:`serving_metrics_port` of
    ``config.metrics.port``, the trainer's).
    """
    # Event time starts now (and, at a given rate, keeps pace with the wall
    # clock), so serving staleness reads as it would on a live stream; clicks
    # come within a 5 s window (median 0.5 s), so labels, and with them the
    # served AUC, show within seconds.
    synthetic = replace(default(), start_ms=int(time.time() * 1000),
                        events_per_second=rate or default().events_per_second,
                        join_window_s=5.0, click_delay_median_s=0.5)
    config = demo_config(config, synthetic)
    if rate is None:
        # Event time then runs ahead of the wall clock (the stream's events per
        # second of event time, produced as fast as the trainer takes them), by
        # design: the joiner must not hold its clock to the wall clock's, or it
        # would release almost no label while the demo runs.
        config = replace(config, ingest=replace(config.ingest,
                                                max_clock_skew_s=_UNBOUNDED_SKEW_S))
    trainer_registry, serving_registry = CollectorRegistry(), CollectorRegistry()
    serving_cfg = replace(config.serving, port=serving_port, sync_port=sync_port)
    replica = ModelReplica(registry=serving_registry)
    servers = create_server(serving_cfg, replica, registry=serving_registry)
    servers.start()
    sink = GrpcDeltaSink(f"{serving_cfg.sync_host}:{servers.sync_port}", serving_cfg.token,
                         config.sync.max_chunk_bytes, config.sync.timeout_s)
    port = config.metrics.port
    trainer_url = _metrics_server(config.metrics.host, port, trainer_registry)
    if serving_metrics is None:
        serving_metrics = serving_metrics_port(port)
    serving_url = _metrics_server(config.metrics.host, serving_metrics, serving_registry)
    client = RecommenderClient(f"{serving_cfg.host}:{servers.port}", timeout_s=5.0)
    source = _ServedSource(IteratorSource(SyntheticStream(synthetic).joined_events(10**12),
                                          rate=rate, name="synthetic"), replica)
    stop = threading.Event()
    candidates = list(range(1, 51))
    last = {"version": 0}
    recent = RecentRate()

    def on_progress(stats: LoopStats) -> None:
        rate_now = recent.update(stats)
        try:
            served = client.predict(user_id=1, item_ids=candidates)
            version = served.model_version
        except Exception:  # not ready yet, or shutting down
            version = 0
        last["version"] = version
        staleness = replica.staleness_seconds()
        p = stats.progress
        rows = pipeline.trainer.rows_summary()
        print(f"[{stats.wall_seconds:6.1f}s] events/s={rate_now:,.0f} "
              f"examples={stats.examples:,} auc={p.get('auc', float('nan')):.4f} "
              f"(recent {p.get('window_auc', float('nan')):.4f}) "
              f"logloss={p.get('logloss', float('nan')):.4f} "
              f"calibration={p.get('calibration', float('nan')):.2f} "
              f"served_auc={pipeline.quality.served.auc:.4f} rows[{rows}] "
              f"serving_version={version} staleness={staleness:.2f}s", file=out, flush=True)

    previous = {}
    try:
        pipeline = build_pipeline(config, source, sinks={"replica-0": sink},
                                  registry=trainer_registry, on_progress=on_progress)
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        print(f"streamrec demo: serving on {serving_cfg.host}:{servers.port} "
              f"(sync {servers.sync_port}); "
              f"metrics: trainer {trainer_url or 'off'}, serving {serving_url or 'off'}; "
              f"Ctrl-C to stop", file=out, flush=True)
        stats = pipeline.run(stop, max_seconds=duration_s)  # reports once more as it ends
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
        sink.close()
        servers.stop(grace=1.0)
    return DemoSummary(stats=stats, serving_version=int(last["version"]),
                       trainer_metrics_url=trainer_url, serving_metrics_url=serving_url)

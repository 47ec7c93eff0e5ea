"""Prometheus metrics of the trainer.

Hot-path counters (steps, examples, step latency) are updated by the loop;
everything the trainer and the run's quality figures already track (table
rows, admissions, evictions, memory, progressive AUC/logloss) is read at
scrape time by a collector, so the training step does no metrics bookkeeping
for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamrec.trainer.quality import QualityMetrics
    from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["TrainerMetrics"]


class _TrainerCollector(Collector):
    def __init__(self, trainer: OnlineTrainer, quality: QualityMetrics) -> None:
        self.trainer = trainer
        self.quality = quality

    def collect(self) -> Iterator[Metric]:
        t = self.trainer
        rows = GaugeMetricFamily("streamrec_trainer_table_rows", "Rows held per table",
                                 labels=["table"])
        mem = GaugeMetricFamily("streamrec_trainer_table_memory_bytes",
                                "Bytes held per table (rows, optimizer state, index, filter)",
                                labels=["table"])
        admitted = CounterMetricFamily("streamrec_trainer_table_admitted_ids",
                                       "Ids given a row", labels=["table"])
        filtered = CounterMetricFamily("streamrec_trainer_table_filtered_ids",
                                       "Lookups of ids held back by the frequency filter",
                                       labels=["table"])
        evicted = CounterMetricFamily("streamrec_trainer_table_evicted_rows",
                                      "Rows expired after their TTL", labels=["table"])
        pruned = CounterMetricFamily("streamrec_trainer_table_pruned_rows",
                                     "Rows freed by OptEmbed pruning (norm under the threshold)",
                                     labels=["table"])
        full = CounterMetricFamily("streamrec_trainer_table_rejected_full_ids",
                                   "Admissions refused because the table was at max_rows",
                                   labels=["table"])
        for name, table in t.tables.items():
            stats = table.stats
            rows.add_metric([name], len(table))
            mem.add_metric([name], table.memory_bytes())
            admitted.add_metric([name], stats.admitted)
            filtered.add_metric([name], stats.filtered)
            evicted.add_metric([name], stats.evicted)
            pruned.add_metric([name], stats.pruned)
            full.add_metric([name], stats.rejected_full)
        yield from (rows, mem, admitted, filtered, evicted, pruned, full)
        dropped = CounterMetricFamily(
            "streamrec_trainer_wide_dropped_keys",
            "Wide-term keys past the first MAX_TERM_KEYS per example (crosses of long lists), "
            "summed over the outcomes learned", labels=["table"])
        for name, count in t.wide.dropped_keys.items():
            dropped.add_metric([name], count)
        yield dropped
        yield CounterMetricFamily("streamrec_trainer_skipped_steps",
                                  "Batches not learned from because their loss was not finite",
                                  value=t.skipped_steps)
        p = self.quality.progress.snapshot()
        # On joined streams the score is the one given when the impression
        # arrived (served time); labeled examples are scored test-then-train.
        for key, help_ in (("auc", "Progressive AUC (served-time scores on joined impressions, "
                                   "test-then-train on labeled examples) since the first example "
                                   "(checkpoints carry it across restarts)"),
                           ("logloss", "Progressive logloss since the first example"),
                           ("calibration", "Mean predicted over observed click rate since the "
                                           "first example (1 = calibrated)"),
                           ("window_auc", "Progressive AUC over the most recent examples"),
                           ("window_logloss", "Progressive logloss over the most recent examples"),
                           ("window_calibration", "Mean predicted over observed click rate over "
                                                  "the most recent examples")):
            value = float(p.get(key, math.nan))
            yield GaugeMetricFamily(f"streamrec_trainer_progressive_{key}", help_, value=value)
        yield from _replica_families(self.quality)
        lag = GaugeMetricFamily("streamrec_trainer_event_time_lag_seconds",
                                "Wall clock minus the newest event time learned from")
        if t.event_time_ms:
            lag.add_metric([], time.time() - t.event_time_ms / 1000)
        yield lag


def _replica_families(q: QualityMetrics) -> Iterator[Metric]:
    """Quality of the scores replicas served, as applications report them with impressions."""
    r = q.served.snapshot()
    for key, help_ in (("auc", "AUC of the scores replicas served (Event.served_score), since "
                               "the first one reported"),
                       ("logloss", "Logloss of the scores replicas served"),
                       ("calibration", "Mean served score over observed click rate")):
        yield GaugeMetricFamily(f"streamrec_trainer_served_{key}", help_,
                                value=float(r.get(key, math.nan)))
    yield CounterMetricFamily("streamrec_trainer_served_scores",
                              "Labeled impressions that carried a served score",
                              value=q.served.examples)
    versions = q.served_versions
    auc = GaugeMetricFamily("streamrec_trainer_served_version_auc",
                            "AUC of the scores served by each of the newest model versions "
                            "(\"none\": no version reported)", labels=["model_version"])
    calibration = GaugeMetricFamily("streamrec_trainer_served_version_calibration",
                                    "Mean served score over observed click rate, per model version",
                                    labels=["model_version"])
    scores = GaugeMetricFamily("streamrec_trainer_served_version_scores",
                               "Labeled impressions scored by each model version",
                               labels=["model_version"])
    for version, metrics in versions.by_version.items():
        label = ["none" if version is None else str(version)]
        auc.add_metric(label, metrics.auc)
        calibration.add_metric(label, metrics.calibration)
        scores.add_metric(label, metrics.examples)
    yield from (auc, calibration, scores)
    yield CounterMetricFamily("streamrec_trainer_served_untracked_scores",
                              "Served scores of a model version older than every tracked one "
                              "(not in the per-version figures)", value=versions.untracked)


class TrainerMetrics:
    """The trainer's and the run's ``quality`` metrics, on ``registry`` (default: the global one)."""

    def __init__(self, trainer: OnlineTrainer, quality: QualityMetrics,
                 registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.steps = Counter("streamrec_trainer_steps_total", "Optimizer steps taken",
                             registry=registry)
        self.examples = Counter("streamrec_trainer_examples_total",
                                "Examples learned from", registry=registry)
        self.positives = Counter("streamrec_trainer_positive_examples_total",
                                 "Positive examples learned from", registry=registry)
        self.step_seconds = Histogram(
            "streamrec_trainer_step_seconds", "Wall time of one training step",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry)
        self.checkpoints = Counter("streamrec_trainer_checkpoints_total", "Checkpoints written",
                                   ["result"], registry=registry)
        for result in ("ok", "error"):
            self.checkpoints.labels(result)
        self.checkpoint_seconds = Histogram(
            "streamrec_trainer_checkpoint_seconds", "Wall time of one checkpoint",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60), registry=registry)
        registry.register(_TrainerCollector(trainer, quality))

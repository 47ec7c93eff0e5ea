"""Prometheus metrics of a serving replica."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamrec.serving.replica import ModelReplica

__all__ = ["ServingMetrics", "METHODS", "CODES", "RESULTS", "SHED_REASONS"]

METHODS = ("Predict", "Recommend")
CODES = ("OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "INTERNAL", "RESOURCE_EXHAUSTED",
         "DEADLINE_EXCEEDED", "CANCELLED")
# Why a request was not scored (serving/admission.py).
SHED_REASONS = ("overload", "deadline", "cancelled")
# Results of a push to this replica: applied; a gap (the trainer resends a
# snapshot); refused as stale (not above the version held), non-finite, or
# not fitting the model (error); a bad token.
RESULTS = ("ok", "gap", "stale", "non_finite", "error", "unauthenticated")


class _ReplicaCollector(Collector):
    def __init__(self, replica: ModelReplica) -> None:
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("streamrec_serving_model_version",
                                "Parameter version being served (0 = none yet)",
                                value=self.replica.version)
        learned_ms = self.replica.learned_event_time_ms()
        yield GaugeMetricFamily(
            "streamrec_serving_learned_event_time_seconds",
            "Event time (Unix seconds) of the newest examples the served model has learned "
            "(NaN before any)",
            value=learned_ms / 1000 if learned_ms else float("nan"))
        staleness = self.replica.staleness_seconds()
        yield GaugeMetricFamily(
            "streamrec_serving_staleness_seconds",
            "Wall seconds since the event time the served model has learned up to: grows "
            "while nothing new is learned or delivered",
            value=staleness if math.isfinite(staleness) else float("nan"))
        rows = GaugeMetricFamily("streamrec_serving_table_rows", "Rows held per table",
                                 labels=["table"])
        for name, n in self.replica.table_rows().items():
            rows.add_metric([name], n)
        yield rows


class ServingMetrics:
    """Request counters and latency, delta applications, and scrape-time replica state."""

    def __init__(self, replica: ModelReplica, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.requests = Counter("streamrec_serving_requests_total", "Requests by method and code",
                                ["method", "code"], registry=registry)
        for method in METHODS:
            for code in CODES:
                self.requests.labels(method, code)
        self.latency = Histogram(
            "streamrec_serving_request_seconds", "Request latency", ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry)
        self.candidates = Histogram("streamrec_serving_candidates", "Candidates per request",
                                    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000),
                                    registry=registry)
        self.deltas = Counter("streamrec_serving_deltas_applied_total",
                              "Parameter deltas received, by kind and result",
                              ["kind", "result"], registry=registry)
        for kind in ("delta", "full"):
            for result in RESULTS:
                self.deltas.labels(kind, result)
        self.shed = Counter("streamrec_serving_shed_total",
                            "Requests refused before scoring, by method and reason (overload: "
                            "the queue was full, or too long for the deadline; deadline: too "
                            "little time left to score; cancelled: while waiting)",
                            ["method", "reason"], registry=registry)
        for method in METHODS:
            for reason in SHED_REASONS:
                self.shed.labels(method, reason)
        self.in_flight = Gauge("streamrec_serving_in_flight",
                               "Predict/Recommend requests admitted: scoring or waiting",
                               registry=registry)
        self.ignored_features = Counter(
            "streamrec_serving_ignored_features_total",
            "Requests carrying feature names the model does not read (ignored; the replica "
            "log names them)", ["method"], registry=registry)
        for method in METHODS:
            self.ignored_features.labels(method)
        self.non_finite_scores = Counter(
            "streamrec_serving_non_finite_scores_total",
            "Candidates the model scored NaN or infinite (the request fails with INTERNAL)",
            registry=registry)
        registry.register(_ReplicaCollector(replica))

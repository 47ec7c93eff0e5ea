"""Prometheus metrics of ingestion: records, dead letters by kind, commits, joiner, lag,
features the model ignores or misses."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamrec.errors import DecodeError

__all__ = ["IngestMetrics", "SOURCES"]

# The ``source`` label values: KafkaSource, FileSource and MemorySource.
SOURCES = ("kafka", "file", "memory")

Lag = Callable[[], dict[tuple[str, int], int]]


class _LagCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[Lag] = []

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("streamrec_ingest_consumer_lag_records",
                                "Records behind the partition's high watermark",
                                labels=["topic", "partition"])
        for read in list(self.sources):  # a source may close meanwhile
            for (topic, partition), n in read().items():
                lag.add_metric([topic, str(partition)], n)
        yield lag


class IngestMetrics:
    """Registered on ``registry``; sources and the joiner update it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.records = Counter("streamrec_ingest_records_total", "Records read from sources",
                               ["source"], registry=registry)
        self.bytes = Counter("streamrec_ingest_bytes_total", "Bytes of records read",
                             ["source"], registry=registry)
        for source in SOURCES:
            self.records.labels(source)
            self.bytes.labels(source)
        self.dead_letters = Counter("streamrec_ingest_dead_letters_total",
                                    "Records rejected, by reason", ["kind"], registry=registry)
        for kind in DecodeError.KINDS:
            self.dead_letters.labels(kind)
        self.dead_letters_dropped = Counter(
            "streamrec_ingest_dead_letters_dropped_total",
            "Dead letters the sink could not forward (logged and skipped; training goes on)",
            registry=registry)
        self.commits = Counter("streamrec_ingest_commits_total", "Offset commits",
                               ["result"], registry=registry)
        for result in ("ok", "error"):
            self.commits.labels(result)
        self.log_replacements = Counter(
            "streamrec_ingest_log_replacements_total",
            "Topic logs found replaced, by evidence: a new topic id (deleted and recreated, "
            "or another cluster), or the broker's out-of-range answer (truncated, or "
            "replaced where no topic id tells); read again from their start",
            ["topic", "evidence"], registry=registry)
        self.joined = Counter("streamrec_ingest_joiner_examples_total",
                              "Examples the joiner emitted, by label", ["label"],
                              registry=registry)
        for label in ("positive", "negative"):
            self.joined.labels(label)
        self.dropped = Counter("streamrec_ingest_joiner_dropped_total",
                               "Events the joiner dropped, by reason", ["reason"],
                               registry=registry)
        for reason in ("orphan_action", "unknown_type", "negative_sampled",
                       "duplicate_impression"):
            self.dropped.labels(reason)
        # Not a drop: such an impression is emitted, as a negative, too early.
        self.overflow = Counter(
            "streamrec_ingest_joiner_overflow_total",
            "Impressions labelled negative before their window ended, because max_pending "
            "impressions were waiting (each is also counted in examples_total unless sampled out)",
            registry=registry)
        self.pending = Gauge("streamrec_ingest_joiner_pending_impressions",
                             "Impressions waiting for actions", registry=registry)
        # ingest/feature_audit.py: the stream's features against the model's.
        self.feature_checked = Counter(
            "streamrec_ingest_feature_checked_events_total",
            "Impressions and examples whose features were checked against the model's",
            registry=registry)
        self.feature_ignored = Counter(
            "streamrec_ingest_feature_ignored_events_total",
            "Checked events carrying a feature the model does not read, by feature name "
            "(the first names seen; the rest as _other)", ["feature"], registry=registry)
        self.feature_missing = Counter(
            "streamrec_ingest_feature_missing_events_total",
            "Checked events carrying no value for one of the model's features, by feature",
            ["feature"], registry=registry)
        self.feature_mistyped = Counter(
            "streamrec_ingest_feature_mistyped_events_total",
            "Checked events whose value for a dense feature is not one number (a string "
            "reads as 0; values after the first are dropped), by feature",
            ["feature"], registry=registry)
        self._lag = _LagCollector()
        registry.register(self._lag)

    def watch_lag(self, read: Lag) -> None:
        """Report ``read()``'s per-partition lag at every scrape (from the scrape thread)."""
        self._lag.sources.append(read)

    def unwatch_lag(self, read: Lag) -> None:
        """Stop reporting ``read`` (its source closed)."""
        if read in self._lag.sources:
            self._lag.sources.remove(read)

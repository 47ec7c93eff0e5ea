"""The /metrics of a multi-process replica: every worker's series, with a ``worker`` label.

At each scrape the parent reads each worker's own /metrics over localhost
and re-exposes the samples labelled ``worker="<i>"``. prometheus_client's
multiprocess mode would not do: it aggregates only Counter/Gauge/Histogram
files, not the scrape-time collectors a replica exports (model version,
staleness, table rows), and each worker's process metrics (CPU, memory)
would be lost.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["WorkerMetricsCollector"]


class WorkerMetricsCollector(Collector):
    """Yields the families of every worker ``targets()`` names as ``(index, metrics_port)``.

    A worker that does not answer (restarting) is left out of that scrape;
    ``streamrec_serving_workers_up`` counts the live ones.
    """

    def __init__(self, targets: Callable[[], Sequence[tuple[int, int]]],
                 timeout_s: float = 2.0) -> None:
        self.targets = targets
        self.timeout_s = timeout_s

    def _read(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=self.timeout_s) as r:
            return str(r.read().decode())

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, port in self.targets():
            try:
                text = self._read(port)
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type, family.unit)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value,
                                   s.timestamp, s.exemplar)
        yield from merged.values()

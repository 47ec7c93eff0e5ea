"""Reading deploy/ for tests: the PromQL in the dashboard and alerts, and the
metric names the code defines.

The catalogue of defined metrics is read from the source, not from a running
process, so it covers every component (Kafka ingest included) without
starting one; the integration test checks the same names against a real
scrape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROOT", "DEPLOY", "CODE_DIRS", "BUILTIN_SERIES", "load_yaml", "load_yaml_all",
           "dashboard", "dashboard_panels", "dashboard_exprs", "alert_rules", "metric_names_in",
           "MetricCatalogue"]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CODE_DIRS = ("ingest", "trainer", "serving", "streamrec")
# Series Prometheus itself writes for every target.
BUILTIN_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


def dashboard_panels(board: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows excluded), also those inside collapsed rows."""
    for panel in (board or dashboard())["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


# A name, not a label (``name="..."``) nor a function (``name(``).
_NAME = re.compile(r'(?<![\w:])(?:streamrec_\w+|up)\b(?!\s*(?:=~|!~|!=|=)\s*""|\s*\()')


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (``streamrec_*`` and the built-in ``up``)."""
    # Label values in quotes may look like names; drop them first.
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


# prometheus_client metric kinds and the sample names each one exposes.
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total", "_created"),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "HistogramMetricFamily": ("_bucket", "_count", "_sum", "_created"),
    "Summary": ("_count", "_sum", "_created"),
    "SummaryMetricFamily": ("_count", "_sum", "_created"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
    "Enum": ("",),
    "StateSetMetricFamily": ("",),
}
_DEFINITION = re.compile(
    r"\b(" + "|".join(sorted(_SUFFIXES, key=len, reverse=True)) + r")\(\s*(f?)([\"'])(streamrec_[^\"']*)\3")


class MetricCatalogue:
    """The sample names the code's metric definitions expose, found by reading the source.

    A definition is a prometheus_client constructor (``Counter(...)``,
    ``GaugeMetricFamily(...)``, ...) whose first argument is a ``streamrec_*``
    string. f-string names (``f"streamrec_trainer_progressive_{key}"``) match
    any name with a word in place of each ``{...}``.
    """

    def __init__(self, root: Path = ROOT, dirs: tuple[str, ...] = CODE_DIRS) -> None:
        self.families: dict[str, str] = {}  # family name (or pattern) -> kind
        for d in dirs:
            for path in sorted((root / d).rglob("*.py")):
                for kind, is_f, _, name in _DEFINITION.findall(path.read_text()):
                    if kind in ("Counter", "CounterMetricFamily"):
                        name = name.removesuffix("_total")  # the client adds it back
                    self.families[name if not is_f else "f:" + name] = kind
        self._patterns = [self._pattern(family, kind) for family, kind in self.families.items()]

    @staticmethod
    def _pattern(family: str, kind: str) -> re.Pattern[str]:
        if family.startswith("f:"):
            parts = re.split(r"\{[^}]*\}", family[2:])
            body = r"[a-z0-9_]+".join(re.escape(p) for p in parts)
        else:
            body = re.escape(family)
        return re.compile(body + "(?:" + "|".join(re.escape(s) for s in _SUFFIXES[kind]) + ")")

    def defines(self, sample_name: str) -> bool:
        return any(p.fullmatch(sample_name) for p in self._patterns)

    def family_used(self, family: str, names: set[str]) -> bool:
        """Whether any of ``names`` is a sample of ``family``."""
        pattern = self._pattern(family, self.families[family])
        return any(pattern.fullmatch(n) for n in names)

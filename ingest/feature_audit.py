"""The stream's features against the model's: which it ignores, which never come.

A log line and a counter per feature name: docs/design.md, "The feature audit".
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamrec.ingest.event import Event
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.schema import EVENT_IDS, LEARNED_TYPES
from streamrec.ingest.source import EventSource, ForwardingSource, SourceBatch

__all__ = ["FeatureAudit", "AuditedSource", "OTHER"]

log = logging.getLogger(__name__)

OTHER = "_other"  # the label of ignored names beyond max_names


class FeatureAudit:
    """Counts stream features the model ignores and model features events lack.

    ``ignored`` maps a name (or :data:`OTHER`) to the checked events carrying it;
    ``missing`` maps each model feature to the checked events without it;
    ``mistyped`` each dense feature to the checked events whose value for it is
    not one number; ``checked`` counts the impressions and examples seen.
    """

    def __init__(self, sparse_features: Sequence[str], dense_features: Sequence[str],
                 metrics: IngestMetrics | None = None, report_after: int = 10_000,
                 max_names: int = 100) -> None:
        if report_after < 1 or max_names < 1:
            raise ValueError("report_after and max_names must be >= 1")
        # The event's ids are fields of every event, never missing.
        self.model_features = tuple(f for f in (*sparse_features, *dense_features)
                                    if f not in EVENT_IDS)
        self._model = frozenset(self.model_features)
        self._dense = tuple(f for f in dense_features if f not in EVENT_IDS)
        self.metrics = metrics
        self.report_after = report_after
        self.max_names = max_names
        self.checked = 0
        self.ignored: dict[str, int] = {}
        self.missing = dict.fromkeys(self.model_features, 0)
        self.mistyped = dict.fromkeys(self._dense, 0)
        self._reported_missing = False
        if metrics is not None:
            metrics.feature_ignored.labels(OTHER)
            for name in self.model_features:
                metrics.feature_missing.labels(name)
            for name in self._dense:
                metrics.feature_mistyped.labels(name)

    def never_carried(self) -> list[str]:
        """The model features no checked event has carried."""
        return [f for f, n in self.missing.items() if n == self.checked and self.checked]

    def observe(self, events: Iterable[Event]) -> None:
        """Check the impressions and examples among ``events`` (one poll's worth)."""
        featured = [e.features for e in events if e.type in LEARNED_TYPES]
        if not featured:
            return
        # Feature names, counted in one C-level pass (iterating a dict yields its keys).
        carried = Counter(itertools.chain.from_iterable(featured))
        self.checked += len(featured)
        m = self.metrics
        if m is not None:
            m.feature_checked.inc(len(featured))
        for name in self.model_features:
            lacking = len(featured) - carried.get(name, 0)
            if lacking:
                self.missing[name] += lacking
                if m is not None:
                    m.feature_missing.labels(name).inc(lacking)
        for name in self._dense:
            if carried.get(name):
                self._count_mistyped(name, featured)
        if not carried.keys() <= self._model:
            self._count_ignored({n: c for n, c in carried.items() if n not in self._model})
        if not self._reported_missing and self.checked >= self.report_after:
            self.report_missing()

    def _count_mistyped(self, name: str, featured: list[Mapping[str, tuple[Any, ...]]]
                        ) -> None:
        bad = sum(1 for v in (f.get(name) for f in featured)
                  if v is not None and (len(v) != 1 or type(v[0]) is str))
        if not bad:
            return
        if not self.mistyped[name]:
            log.warning("dense feature %r: an event carries a string or several values for "
                        "it (an event with a string is a dead letter, wrong_type; of several "
                        "numbers the first is read)", name)
        self.mistyped[name] += bad
        if self.metrics is not None:
            self.metrics.feature_mistyped.labels(name).inc(bad)

    def _count_ignored(self, counts: Mapping[str, int]) -> None:
        for name, n in counts.items():
            if name not in self.ignored:
                if len(self.ignored) >= self.max_names:
                    if OTHER not in self.ignored:
                        log.warning("more than %d stream features are not model features: "
                                    "the others are counted as %r", self.max_names, OTHER)
                    name = OTHER
                elif name in EVENT_IDS:
                    log.warning("stream feature %r is ignored: the model's %s is the event's "
                                "own field", name, name)
                else:
                    log.warning("stream feature %r is not a model feature "
                                "(model.sparse_features, model.dense_features): ignored", name)
            self.ignored[name] = self.ignored.get(name, 0) + n
            if self.metrics is not None:
                self.metrics.feature_ignored.labels(name).inc(n)

    def report_missing(self) -> None:
        """Log (once) each model feature that no checked event carried."""
        if self._reported_missing or not self.checked:
            return
        self._reported_missing = True
        for name in self.never_carried():
            log.warning("model feature %r: none of the first %d impressions and examples "
                        "carries it (check its name in model.sparse_features / "
                        "model.dense_features)", name, self.checked)


class AuditedSource(ForwardingSource):
    """An :class:`~ingest.source.EventSource` whose polls pass through a :class:`FeatureAudit`."""

    def __init__(self, source: EventSource, audit: FeatureAudit) -> None:
        super().__init__(source)
        self.audit = audit

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        got = self.source.poll(max_events, timeout_s)
        self.audit.observe(got.events)
        return got

    def close(self) -> None:
        """Report model features never carried (if not yet), then close the source."""
        self.audit.report_missing()
        self.source.close()

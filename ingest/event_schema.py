"""What a decoded event must be for this model: its type and its features' types.

Refused events become dead letters with their reason; the rules:
docs/design.md, "The event schema".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING

from streamrec.ingest.decode import encode_json
from streamrec.ingest.event import EXAMPLE, IMPRESSION, Event
from streamrec.ingest.source import DeadLetter, SourceBatch

if TYPE_CHECKING:
    from streamrec.ingest.metrics import IngestMetrics
    from streamrec.config import AppConfig

__all__ = ["EventSchema"]

_TYPE = attrgetter("type")
_FEATURES = attrgetter("features")


@dataclass
class EventSchema:
    """The event types and feature types one model accepts; see the module docstring."""

    action_types: Iterable[str]
    dense_features: Iterable[str] = ()
    sparse_features: Iterable[str] = ()
    case_sensitive: bool = False
    metrics: IngestMetrics | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.action_types = tuple(self.action_types)
        self._exact = frozenset((EXAMPLE, IMPRESSION, *self.action_types))
        self._folded = {t.lower(): t for t in self._exact}
        # The features to check, as tuples (iterated per event); user_id and
        # item_id are the event's own fields, typed by decoding.
        self._dense = tuple(dict.fromkeys(self.dense_features))
        self._ids = tuple(f for f in dict.fromkeys(self.sparse_features)
                          if f not in ("user_id", "item_id"))

    @classmethod
    def from_config(cls, config: AppConfig, metrics: IngestMetrics | None = None
                    ) -> EventSchema:
        return cls(config.ingest.action_types, config.model.dense_features,
                   config.model.sparse_features, config.ingest.types_case_sensitive, metrics)

    def check(self, event: Event) -> Event | tuple[str, str]:
        """``event`` (its type in canonical case), or ``(kind, reason)`` refusing it."""
        type_ = event.type
        if type_ not in self._exact:
            canonical = None if self.case_sensitive else self._folded.get(type_.lower())
            if canonical is None:
                return "unknown_type", self._unknown(type_)
            if canonical == EXAMPLE and event.label is None:
                return "missing_field", f"missing field 'label' (required for type {type_!r})"
            event = event._replace(type=canonical)
        features = event.features
        if features:
            get = features.get
            for name in self._dense:
                values = get(name)
                if values and str in map(type, values):
                    return "wrong_type", self._wrong(name, values, str, "is dense (model."
                                                     "dense_features): it takes numbers")
            for name in self._ids:
                values = get(name)
                if values and float in map(type, values):
                    return "wrong_type", self._wrong(name, values, float,
                                                     "is an id feature (model.sparse_features): "
                                                     "it takes strings or integers")
        return event

    @staticmethod
    def _wrong(name: str, values: tuple[object, ...], kind: type, rule: str) -> str:
        bad = next(v for v in values if type(v) is kind)
        what = f"the string {bad[:40]!r}" if isinstance(bad, str) else f"the number {bad!r}"
        return f"feature {name!r} {rule}, got {what}"

    def _unknown(self, type_: str) -> str:
        known = ", ".join(sorted(self._exact))
        hint = ""
        if self.case_sensitive and type_.lower() in self._folded:
            hint = " (types match with regard to case: ingest.types_case_sensitive = true)"
        return f"type {type_[:64]!r} is not one of {known} (ingest.action_types){hint}"

    def _clean(self, events: list[Event]) -> bool:
        """Whether every event passes as it is, by column-wise passes that run in C.

        (About 10x faster than :meth:`check` per event; a batch with any
        event to change or refuse is then checked event by event.)
        """
        if not set(map(_TYPE, events)) <= self._exact:
            return False
        features = list(map(_FEATURES, events))
        for names, bad in ((self._dense, str), (self._ids, float)):
            for name in names:
                column = map(methodcaller("get", name, ()), features)
                if bad in map(type, chain.from_iterable(column)):
                    return False
        return True

    def screen(self, batch: SourceBatch) -> SourceBatch:
        """``batch`` with the events this schema refuses moved to its dead letters.

        A refused event's dead letter holds the event re-encoded as JSON (the
        source's bytes are not kept after decoding) and its origin partition.
        """
        events, origins = batch.events, batch.origins
        if self._clean(events):
            return batch
        kept: list[Event] = []
        kept_origins: list[tuple[str, int]] | None = [] if origins is not None else None
        dead: list[DeadLetter] = []
        changed = False
        for i, event in enumerate(events):
            checked = self.check(event)
            if checked is not event:
                changed = True
                if type(checked) is tuple:
                    kind, reason = checked
                    origin = origins[i] if origins is not None else None
                    dead.append(DeadLetter(encode_json(event), kind, reason,
                                           f"{origin[0]}/{origin[1]}" if origin else "decoded"))
                    continue
            kept.append(checked)  # type: ignore[arg-type]
            if kept_origins is not None:
                kept_origins.append(origins[i])  # type: ignore[index]
        if not changed:
            return batch
        if self.metrics is not None:
            for letter in dead:
                self.metrics.dead_letters.labels(letter.kind).inc()
        return replace(batch, events=kept, origins=kept_origins,
                       dead_letters=[*batch.dead_letters, *dead])

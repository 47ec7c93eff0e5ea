"""Feature discovery: the model's feature lists from the first events of a stream.

Numbers with a float are dense, strings and integers sparse, several values a
bag; the rule in full: docs/design.md, "Feature discovery".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streamrec.ingest.event import EXAMPLE, IMPRESSION, Event

__all__ = ["FeatureSchema", "SchemaScan", "EVENT_IDS", "LEARNED_TYPES"]

EVENT_IDS = ("user_id", "item_id")
# The event types whose features the model learns (actions only label impressions).
LEARNED_TYPES = frozenset((EXAMPLE, IMPRESSION))

_STRING, _INTEGER, _FLOAT, _SEVERAL = 1, 2, 4, 8


@dataclass(frozen=True)
class FeatureSchema:
    """The feature lists a model is built with, and what they were found in.

    ``bags`` are the sparse features seen with several values in one event;
    ``events`` how many impressions and examples were scanned.
    """

    sparse: tuple[str, ...]
    dense: tuple[str, ...]
    bags: tuple[str, ...] = ()
    events: int = 0

    def describe(self) -> str:
        """One line for a person: each feature with how the model reads it."""
        sparse = [f"{f} (bag)" if f in self.bags else f for f in self.sparse]
        return (f"sparse: {', '.join(sparse)}; dense: {', '.join(self.dense) or '-'}")


class SchemaScan:
    """Accumulates the value kinds of each feature over events; :meth:`schema` applies the rule."""

    def __init__(self) -> None:
        self._kinds: dict[str, int] = {}
        self.events = 0

    def observe(self, events: Iterable[Event]) -> None:
        """Take the features of the impressions and examples among ``events``."""
        kinds = self._kinds
        for event in events:
            if event.type not in LEARNED_TYPES:
                continue
            self.events += 1
            for name, values in event.features.items():
                seen = kinds.get(name, 0)
                if len(values) != 1:
                    seen |= _SEVERAL
                for value in values:
                    kind = type(value)
                    seen |= _STRING if kind is str else _FLOAT if kind is float else _INTEGER
                kinds[name] = seen

    def schema(self) -> FeatureSchema:
        """The schema of everything observed so far (names in sorted order)."""
        sparse, dense, bags = list(EVENT_IDS), [], []
        for name in sorted(self._kinds):
            seen = self._kinds[name]
            if name in EVENT_IDS:
                continue
            if seen & _FLOAT and not seen & (_STRING | _SEVERAL):
                dense.append(name)
                continue
            sparse.append(name)
            if seen & _SEVERAL:
                bags.append(name)
        return FeatureSchema(sparse=tuple(sparse), dense=tuple(dense), bags=tuple(bags),
                             events=self.events)

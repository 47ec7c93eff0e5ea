"""The in-process event: what every source decodes to and the batcher reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Event", "FeatureValue", "EXAMPLE", "IMPRESSION"]

FeatureValue = str | int | float

EXAMPLE = "example"
IMPRESSION = "impression"


@dataclass(frozen=True, slots=True)
class Event:
    """One user event.

    ``type`` is ``"example"`` (a labeled training example that skips the
    joiner), ``"impression"``, or an action such as ``"click"``. ``user_id``
    and ``item_id`` are signed 64-bit ids (string ids are hashed to 64 bits by
    the decoder, see :func:`ingest.ids.hash_id`). ``features`` maps a feature
    name to a tuple of values: strings or integers are categorical ids, floats
    are numeric. ``label`` is 0.0 or 1.0 for examples, ``None`` otherwise.
    ``sample_rate`` is the probability with which this example was kept by
    negative down-sampling (1.0 when nothing was dropped).
    """

    type: str
    user_id: int
    item_id: int
    timestamp_ms: int
    request_id: str = ""
    event_id: str = ""
    features: Mapping[str, tuple[FeatureValue, ...]] = field(default_factory=dict)
    label: float | None = None
    sample_rate: float = 1.0

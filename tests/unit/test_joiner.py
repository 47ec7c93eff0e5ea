"""The joiner turns impressions and actions into labeled examples."""

from __future__ import annotations

from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from ingest.event import Event
from ingest.joiner import Joiner
from ingest.metrics import IngestMetrics

T0 = 1_700_000_000_000


def imp(request: str, item: int, t: int, user: int = 1) -> Event:
    return Event("impression", user, item, T0 + t, request_id=request,
                 features={"category": ("c",)})


def act(request: str, item: int, t: int, kind: str = "click") -> Event:
    return Event(kind, 1, item, T0 + t, request_id=request)


def test_an_action_within_the_window_labels_its_impression_positive_at_once() -> None:
    j = Joiner(["click"], window_s=10)
    assert j.push([imp("r1", 7, 0), imp("r1", 8, 0)]) == []
    out = j.push([act("r1", 7, 3_000)])
    assert [(e.item_id, e.label, e.type) for e in out] == [(7, 1.0, "example")]
    assert out[0].features == {"category": ("c",)}  # the impression's features
    assert out[0].timestamp_ms == T0  # and its time
    assert j.pending == 1
    assert j.push([act("r1", 7, 4_000)]) == []  # a second click counts once


def test_unmatched_impressions_become_negatives_once_the_watermark_passes_the_window() -> None:
    j = Joiner(["click"], window_s=10)
    j.push([imp("r1", 7, 0), imp("r2", 9, 5_000)])
    assert j.push([act("r3", 1, 9_000)]) == []  # orphan action, nothing expired yet
    out = j.push([imp("r4", 3, 12_000)])
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0)]
    late = j.push([act("r2", 9, 16_000)])  # 11 s after its impression: too late
    assert [(e.item_id, e.label) for e in late] == [(9, 0.0)]
    assert [(e.item_id, e.label) for e in j.flush()] == [(3, 0.0)]
    assert j.pending == 0


def test_examples_pass_through_and_other_types_are_dropped_and_counted() -> None:
    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    example = Event("example", 1, 2, T0, label=1.0)
    assert j.push([example, Event("hover", 1, 2, T0), act("x", 1, 0)]) == [example]
    get = registry.get_sample_value
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "unknown_type"}) == 1
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "orphan_action"}) == 1


def test_negative_sampling_is_deterministic_and_records_the_rate() -> None:
    def run() -> list[Event]:
        j = Joiner(["click"], window_s=1, rate=0.25, seed=3)
        j.push([imp(f"r{i}", i, 0) for i in range(4000)])
        return j.flush()

    first, second = run(), run()
    assert [e.item_id for e in first] == [e.item_id for e in second]
    kept = len(first) / 4000
    assert 0.2 < kept < 0.3
    assert {e.sample_rate for e in first} == {0.25}
    # Positives are never sampled away.
    j = Joiner(["click"], window_s=1, rate=0.01)
    j.push([imp(f"r{i}", i, 0) for i in range(100)])
    assert len(j.push([act(f"r{i}", i, 10) for i in range(100)])) == 100


def test_pending_impressions_survive_a_checkpoint(tmp_path: Path) -> None:
    j = Joiner(["click"], window_s=10)
    j.push([imp("r1", 7, 0), imp("r2", 8, 1_000)])
    state = j.state_dict()
    # Checkpoints hold plain containers only (torch.load with weights_only=True).
    path = tmp_path / "joiner.pt"
    torch.save(state, path)
    restored = Joiner(["click"], window_s=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.pending == 2
    out = restored.push([act("r2", 8, 2_000)])
    assert [(e.item_id, e.label, e.features) for e in out] == [(8, 1.0, {"category": ("c",)})]


def test_the_pending_gauge_follows_flush_and_restore() -> None:
    def gauge(registry: CollectorRegistry) -> float | None:
        return registry.get_sample_value("streamrec_ingest_joiner_pending_impressions")

    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    j.push([imp("r1", 7, 0), imp("r2", 8, 1_000)])
    state = j.state_dict()
    assert gauge(registry) == 2
    assert len(j.flush()) == 2 and gauge(registry) == 0  # the end of a finite stream
    restored_registry = CollectorRegistry()
    restored = Joiner(["click"], window_s=10, metrics=IngestMetrics(restored_registry))
    restored.load_state_dict(state)
    assert gauge(restored_registry) == 2

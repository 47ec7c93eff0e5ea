"""Feature discovery (ingest/schema.py) and the feature audit (ingest/feature_audit.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest
from prometheus_client import CollectorRegistry

from streamrec.ingest.event import Event, FeatureValue
from streamrec.ingest.feature_audit import OTHER, AuditedSource, FeatureAudit
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.schema import SchemaScan
from streamrec.ingest.source import MemorySource


def example(features: Mapping[str, Sequence[FeatureValue]], type_: str = "example") -> Event:
    return Event(type=type_, user_id=1, item_id=2, timestamp_ms=0,
                 features={k: tuple(v) for k, v in features.items()},
                 label=0.0 if type_ == "example" else None)


def test_each_kind_of_value_becomes_the_documented_kind_of_feature() -> None:
    scan = SchemaScan()
    scan.observe([
        example({"country": ["fr"], "hour": [13], "price": [9.5], "tags": ["a", "b"],
                 "score": [1], "empty": []}),
        example({"country": ["de"], "hour": [14], "price": [10], "tags": ["c"],
                 "score": [0.25]}),
    ])
    schema = scan.schema()
    # user_id and item_id stay features, first; strings and integers are categorical.
    assert schema.sparse == ("user_id", "item_id", "country", "empty", "hour", "tags")
    # Floats are dense, with integers among them read as numbers.
    assert schema.dense == ("price", "score")
    assert schema.bags == ("empty", "tags")
    assert schema.events == 2


def test_mixed_types_resolve_to_sparse() -> None:
    # The rule: a string (or several values in one event) makes a feature sparse,
    # whatever else it carries; a number can be a category id, a string no number.
    scan = SchemaScan()
    scan.observe([example({"size": [1.5], "weights": [0.5]}),
                  example({"size": ["XL"], "weights": [0.5, 0.7]})])
    schema = scan.schema()
    assert schema.sparse == ("user_id", "item_id", "size", "weights")
    assert schema.dense == ()
    assert schema.bags == ("weights",)


def test_only_learned_events_count_and_event_ids_stay_the_events_own(
        caplog: pytest.LogCaptureFixture) -> None:
    events = [example({"device": ["ios"]}, "impression"),
              example({"button": ["buy"]}, "click"),     # an action: never learned
              example({"user_id": ["u"]})]
    scan = SchemaScan()
    scan.observe(events)
    schema = scan.schema()
    assert schema.sparse == ("user_id", "item_id", "device")
    assert schema.events == 2
    # A feature named like an event id is not what the model's user_id reads: said so.
    audit = FeatureAudit(schema.sparse, schema.dense)
    caplog.set_level(logging.INFO, logger="streamrec.ingest.feature_audit")
    audit.observe(events)
    assert audit.ignored == {"user_id": 1}
    assert "the model's user_id is the event's own field" in caplog.text


def sample(registry: CollectorRegistry, name: str, feature: str | None = None) -> float:
    labels = {"feature": feature} if feature else {}
    value = registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_the_audit_counts_ignored_and_missing_features_per_name(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry=registry)
    audit = FeatureAudit(["user_id", "item_id", "country", "colour"], ["price"], metrics,
                         report_after=3)
    caplog.set_level(logging.INFO, logger="streamrec.ingest.feature_audit")
    audit.observe([example({"country": ["fr"], "price": [1.5], "genre": ["rock"]}),
                   example({"country": ["de"], "genre": ["jazz"], "mood": ["calm"]}),
                   example({"button": ["buy"]}, "click")])
    audit.observe([example({"country": ["fr"], "genre": ["pop"], "price": ["n/a"]})])
    audit.observe([example({"country": ["fr"], "genre": ["pop"], "price": [1.0, 2.0]})])
    ignored = sample(registry, "streamrec_ingest_feature_ignored_events_total", "genre")
    assert ignored == 4 and audit.ignored == {"genre": 4, "mood": 1}
    assert sample(registry, "streamrec_ingest_feature_missing_events_total", "colour") == 4
    assert sample(registry, "streamrec_ingest_feature_missing_events_total", "price") == 1
    # A string (a dead letter in the training loop) or several values for a dense feature.
    assert sample(registry, "streamrec_ingest_feature_mistyped_events_total", "price") == 2
    assert audit.mistyped == {"price": 2}
    assert sample(registry, "streamrec_ingest_feature_checked_events_total") == 4
    assert audit.never_carried() == ["colour"]
    messages = [r.getMessage() for r in caplog.records]
    # One line per name, however many events carry it; "colour" once, after 3 events.
    assert sum("'genre' is not a model feature" in m for m in messages) == 1
    assert sum("'mood' is not a model feature" in m for m in messages) == 1
    assert sum("model feature 'colour': none of the first 3" in m for m in messages) == 1
    assert not any("'price': none" in m for m in messages)
    assert sum("dense feature 'price'" in m for m in messages) == 1


def test_ignored_names_beyond_the_cap_are_counted_as_one_label() -> None:
    registry = CollectorRegistry()
    audit = FeatureAudit(["user_id"], [], IngestMetrics(registry=registry), max_names=2)
    audit.observe([example({f"f{i}": ["x"] for i in range(5)})])
    audit.observe([example({"f0": ["x"], "f4": ["x"]})])
    assert audit.ignored == {"f0": 2, "f1": 1, OTHER: 4}
    assert sample(registry, "streamrec_ingest_feature_ignored_events_total", OTHER) == 4
    families = {m.name: m for m in registry.collect()}
    labels = {s.labels["feature"] for s in
              families["streamrec_ingest_feature_ignored_events"].samples
              if s.name.endswith("_total")}
    assert labels == {"f0", "f1", OTHER}


def test_an_audited_source_checks_every_poll_and_reports_at_close(
        caplog: pytest.LogCaptureFixture) -> None:
    events = [example({"colr": ["red"]}) for _ in range(5)]
    audit = FeatureAudit(["user_id", "item_id", "color"], [], report_after=100)
    source = AuditedSource(MemorySource(events), audit)
    caplog.set_level(logging.INFO, logger="streamrec.ingest.feature_audit")
    while not source.exhausted:
        source.poll(2, 0.0)
    assert audit.checked == 5 and audit.ignored == {"colr": 5}
    assert not any("'color': none" in r.getMessage() for r in caplog.records)
    source.close()  # a short stream: reported when it ends, not after 100 events
    assert any("model feature 'color': none of the first 5" in r.getMessage()
               for r in caplog.records)

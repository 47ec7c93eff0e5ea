"""Events of an unknown type, and features of the wrong type for the model, are
dead letters with their reason; action types match without regard to case
unless configured otherwise."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from streamrec.ingest.deadletter import MemoryDeadLetterSink
from streamrec.ingest.joiner import Joiner
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import MemorySource
from streamrec.config import load_config
from streamrec.errors import ConfigError
from streamrec.trainer.loop import TrainingLoop
from streamrec.trainer.trainer import OnlineTrainer

T0 = 1_700_000_000_000


def event(type_: str, i: int, **extra: object) -> bytes:
    data = {"type": type_, "user_id": i % 7, "item_id": i % 5, "timestamp_ms": T0 + i,
            "request_id": f"r{i}", "features": {"category": "c1", "price": 9.5}, **extra}
    return json.dumps(data).encode()


def run(records: list[bytes], **overrides: str) -> tuple[TrainingLoop, MemoryDeadLetterSink,
                                                         CollectorRegistry]:
    config = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id,category",
                                            "model.dense_features": "price",
                                            "trainer.batch_size": "16",
                                            "trainer.warmup_batch_size": "16", **overrides})
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry=registry)
    joiner = Joiner(config.ingest.action_types, config.ingest.join_window_s, metrics=metrics)
    sink = MemoryDeadLetterSink()
    loop = TrainingLoop(OnlineTrainer.from_config(config), MemorySource(records, metrics=metrics),
                        config, joiner=joiner, dead_letters=sink)
    loop.run()
    return loop, sink, registry


def clicked_impressions(click_type: str, n: int = 40) -> list[bytes]:
    out = []
    for i in range(n):
        out.append(event("impression", i))
        if i % 2 == 0:
            out.append(event(click_type, i, timestamp_ms=T0 + i + 5))
    return out


@pytest.mark.parametrize("click", ["Click", "CLICK", "click"])
def test_action_types_match_without_regard_to_case(click) -> None:
    # "Click" was dropped by the joiner (a counter only): the model learned
    # that nobody clicks.
    loop, sink, _ = run(clicked_impressions(click))
    assert loop.stats.positives == 20 and loop.stats.examples == 40
    assert sink.total == 0


def test_an_unknown_type_is_a_dead_letter_with_its_reason() -> None:
    loop, sink, registry = run(clicked_impressions("Clik"))
    assert loop.stats.positives == 0 and sink.total == 20
    letter = sink.letters[0]
    assert letter.kind == "unknown_type"
    assert "'Clik'" in letter.reason and "ingest.action_types" in letter.reason
    assert json.loads(letter.raw)["type"] == "Clik"  # the event itself, to replay once fixed
    assert registry.get_sample_value("streamrec_ingest_dead_letters_total",
                                     {"kind": "unknown_type"}) == 20


def test_case_sensitive_types_refuse_another_case_and_say_why() -> None:
    loop, sink, _ = run(clicked_impressions("Click"), **{"ingest.types_case_sensitive": "true"})
    assert loop.stats.positives == 0 and sink.total == 20
    assert "ingest.types_case_sensitive" in sink.letters[0].reason


@pytest.mark.parametrize("features, reason", [
    ({"category": "c1", "price": "NaN"}, "feature 'price' is dense"),
    ({"category": "c1", "price": ["3", 4.0]}, "feature 'price' is dense"),
    ({"category": 3.5, "price": 1.0}, "feature 'category' is an id feature"),
], ids=["string-price", "string-in-list", "float-category"])
def test_wrongly_typed_features_are_dead_letters(features, reason) -> None:
    records = [event("example", i, label=i % 2) for i in range(20)]
    records.append(event("example", 99, label=1, features=features))
    loop, sink, _ = run(records)
    assert loop.stats.examples == 20 and sink.total == 1
    assert sink.letters[0].kind == "wrong_type" and reason in sink.letters[0].reason


def test_an_example_in_another_case_still_needs_its_label() -> None:
    records = [event("Example", 1, label=1), event("EXAMPLE", 2)]
    loop, sink, _ = run(records)
    assert loop.stats.examples == 1 and sink.total == 1
    assert sink.letters[0].kind == "missing_field" and "'label'" in sink.letters[0].reason


@pytest.mark.parametrize("types, why", [
    ("click,Click", "listed twice"), ("click,impression", "not actions")])
def test_ambiguous_action_types_are_refused_naming_the_field(types, why) -> None:
    with pytest.raises(ConfigError, match=f"ingest.action_types=.*{why}"):
        load_config(env={}, overrides={"ingest.action_types": types})

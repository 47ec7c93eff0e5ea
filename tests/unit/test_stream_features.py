"""The features in the events are the model's: `evaluate` discovers them, `--set` lists
parse, `train` reports what it ignores or never sees (real processes, as a user runs them)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from streamrec.config import load_config
from streamrec.cli.evaluate import evaluate
from tests.unit.test_evaluate import cli

# Small batches: a 10,000-event stream is learned in many steps.
FAST = ("--set", "trainer.threads=1", "--set", "trainer.batch_size=512",
        "--set", "trainer.warmup_batch_size=64")


def write_stream(path: Path, n: int = 10_000, late_after: int = 5_000) -> Path:
    """Examples whose label depends on the item (odd ones are liked), strongly on the
    genre, a little on the price; tags and user ids are noise; ``late`` appears at
    event ``late_after``, and from there every 100th price is "n/a"."""
    rng = random.Random(7)
    with path.open("w") as f:
        for i in range(n):
            item, genre, price = rng.randrange(40), rng.randrange(10), rng.uniform(0, 100)
            logit = (1.2 if item % 2 else -1.2) + (2.0 if genre < 3 else -1.0) + \
                (1.0 if price > 70 else 0.0)
            features = {"genre": f"g{genre}", "price": round(price, 2),
                        "tags": [f"t{rng.randrange(30)}" for _ in range(rng.randrange(1, 4))]}
            if i >= late_after:
                features["late"] = "x"
                if i % 100 == 0:
                    features["price"] = "n/a"
            f.write(json.dumps({
                "type": "example", "label": int(rng.random() < 1 / (1 + math.exp(-logit))),
                "user_id": rng.randrange(10**6), "item_id": item,
                "timestamp_ms": 1_700_000_000_000 + i * 1000, "features": features}) + "\n")
    return path


def test_evaluate_learns_every_feature_the_events_carry(tmp_path: Path) -> None:
    events = str(write_stream(tmp_path / "events.jsonl"))
    result = cli("evaluate", "--events", events, "--discover-events", "1000", *FAST)
    assert result.returncode == 0, result.stderr
    assert ("features of the first 1,000 impressions and examples: sparse: user_id, item_id, "
            "genre, tags (bag); dense: price") in result.stderr
    assert "stream feature 'late' is not a model feature" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["features"] == {
        "from": "stream", "scanned_events": 1000, "sparse": ["user_id", "item_id", "genre", "tags"],
        "dense": ["price"], "bags": ["tags"], "ignored": {"late": 5000}, "never_seen": [],
        "mistyped": {"price": 50}}
    # A string where the scan saw numbers: said once, counted per event, and each such
    # event is a dead letter (wrong_type); the rest, scanned ones too, are trained on.
    assert result.stderr.count("dense feature 'price': an event carries a string") == 1
    assert summary["dead_letters"] == 50
    assert summary["examples"] == 10_000 - 50
    # The same stream with the ids only: the genre and price are what it misses.
    ids_only = evaluate(load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id", "trainer.threads": "1",
        "trainer.batch_size": "512", "trainer.warmup_batch_size": "64"}), events,
        progress=False)
    assert ids_only["features"]["ignored"] == {"genre": 10_000, "late": 5_000,
                                               "price": 10_000, "tags": 10_000}
    assert summary["auc"] > ids_only["auc"] + 0.08, (summary["auc"], ids_only["auc"])


def test_a_toml_list_in_set_names_the_features_not_their_quotes(tmp_path: Path) -> None:
    events = str(write_stream(tmp_path / "events.jsonl"))
    # `--set model.sparse_features=["user_id","item_id"]` after the shell removed the quotes.
    result = cli("evaluate", "--events", events, "--quiet", *FAST,
                 "--set", "model.sparse_features=[user_id,item_id]")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["features"]["sparse"] == ["user_id", "item_id"]
    assert summary["features"]["never_seen"] == []
    assert summary["auc"] > 0.65  # the item ids are learned (no feature at all gives 0.5)
    quoted = load_config(env={}, overrides={"model.sparse_features": '["user_id","item_id"]'})
    assert quoted.model.sparse_features == ["user_id", "item_id"]


def test_a_list_that_cannot_be_parsed_exits_2_naming_the_field(tmp_path: Path) -> None:
    events = str(write_stream(tmp_path / "events.jsonl", n=10))
    result = cli("evaluate", "--events", events, "--set",
                 'model.sparse_features=[user_id, "item_id')
    assert result.returncode == 2
    assert result.stderr.startswith("streamrec: error: model.sparse_features=")
    assert "Traceback" not in result.stderr


def test_a_configured_feature_no_event_carries_is_reported(tmp_path: Path) -> None:
    events = str(write_stream(tmp_path / "events.jsonl", n=3000))
    summary = evaluate(load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,genra", "trainer.threads": "1"}), events,
        progress=False)
    assert summary["features"]["never_seen"] == ["genra"]
    assert summary["features"]["ignored"]["genre"] == 3000


def test_train_logs_features_it_ignores_and_features_it_never_sees(tmp_path: Path) -> None:
    events = str(write_stream(tmp_path / "events.jsonl", n=3000, late_after=2000))
    result = cli("train", "--set", "ingest.source=file", "--set", f"ingest.path={events}",
                 "--set", "metrics.port=-1", "--set", "trainer.threads=1",
                 "--set", 'model.sparse_features=["user_id", "item_id", "genra"]',
                 "--set", "model.dense_features=price")
    assert result.returncode == 0, result.stderr
    for name in ("genre", "tags", "late"):  # once each, however many events carry it
        assert result.stderr.count(f"stream feature {name!r} is not a model feature") == 1
    assert result.stderr.count("model feature 'genra': none of the first 3000 impressions") == 1
    assert "'price': none" not in result.stderr
    assert result.stderr.count("dense feature 'price': an event carries a string") == 1

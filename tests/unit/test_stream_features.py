"""The features in the events are the model's: `evaluate` discovers them, `--set` lists
parse, `train` reports what it ignores or never sees (real processes, as a user runs them)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from tests.unit.test_evaluate import cli

def write_stream(path: Path, n: int = 10_000, late_after: int = 5_000) -> Path:
    """Examples whose label depends on the item (odd ones are liked), strongly on the
    genre, a little on the price; tags and user ids are noise; ``late`` appears at
    event ``late_after``."""
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
            f.write(json.dumps({
                "type": "example", "label": int(rng.random() < 1 / (1 + math.exp(-logit))),
                "user_id": rng.randrange(10**6), "item_id": item,
                "timestamp_ms": 1_700_000_000_000 + i * 1000, "features": features}) + "\n")
    return path


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

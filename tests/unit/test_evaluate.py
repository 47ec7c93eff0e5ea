"""``streamrec generate`` and ``streamrec evaluate``, as a user runs them (real processes)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

from streamrec.ingest.decode import decode_json
from streamrec.synthetic import SyntheticStream, default

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_generate_then_evaluate_prints_the_documented_summary(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    made = cli("generate", str(path), "--events", "3000", "--seed", "0")
    assert made.returncode == 0, made.stderr
    lines = path.read_text().splitlines()
    assert len(lines) == 3000
    # The file is the synthetic stream itself: evaluate learns what generate wrote.
    stream = list(SyntheticStream(dataclasses.replace(default(), seed=0)).events(3000))
    assert [decode_json(line) for line in lines] == stream
    with path.open("a") as f:
        f.write('{"type": "example", "user_id": 1}\n')  # malformed: no item_id
    result = cli("evaluate", "--events", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {"events", "examples", "positives", "dead_letters", "auc",
                            "logloss", "events_per_second", "wall_seconds", "features"}
    # No feature list configured: the model reads every feature the events carry.
    assert summary["features"]["sparse"] == ["user_id", "item_id", "category", "country", "hour"]
    assert summary["features"]["dense"] == ["price"]
    examples = [e for e in stream if e.type == "example"]
    assert summary["events"] == 3000 and summary["dead_letters"] == 1
    assert summary["examples"] == len(examples)
    assert summary["positives"] == sum(e.label or 0 for e in examples)
    assert 0.5 < summary["auc"] < 1 and summary["logloss"] > 0


def test_usage_errors_are_one_line_messages_not_tracebacks(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    events = tmp_path / "e.jsonl"
    assert cli("generate", str(events), "--events", "50").returncode == 0
    cases = [
        (("demo", "--duration", "5", "--metrics-port", str(port)),
         f"metrics.port {port} on '127.0.0.1': Address already in use"),
        (("train", "--set", "ingest.source=file", "--set", f"ingest.path={events}",
          "--set", f"metrics.port={port}"), f"metrics.port {port}"),
        (("train", "--set", "ingest.source=file", "--set", f"ingest.path={events}",
          "--set", "metrics.port=-1", "--set", f"trainer.checkpoint_dir={events}/sub"),
         "checkpoint directory"),
        (("demo", "--rate", "0"), "--rate: 0: must be a finite number > 0"),
        (("demo", "--duration", "nan"), "--duration: nan: must be a finite number > 0"),
        (("generate", str(tmp_path / "x.jsonl"), "--events", "-5"), "--events: -5: must be >= 1"),
        (("generate", str(tmp_path / "x.jsonl"), "--seed", "-1"), "--seed: -1: must be >= 0"),
        (("generate", str(tmp_path / "no" / "such" / "dir" / "x.jsonl")), "cannot write"),
        (("generate", str(tmp_path / "x.csv")), "generate writes JSON lines"),
    ]
    try:
        for args, message in cases:
            result = cli(*args)
            assert result.returncode == 2, (args, result.stderr)
            assert message in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr, (args, result.stderr)
    finally:
        taken.close()


def test_the_joiners_pending_limit_comes_from_the_config(tmp_path: Path) -> None:
    # 20 impressions, then a click for each: all 20 wait and join, unless
    # ingest.join_max_pending holds fewer, which labels the rest negative early.
    from streamrec.ingest.decode import encode_json
    from streamrec.ingest.event import Event
    from streamrec.config import load_config
    from streamrec.cli.evaluate import evaluate

    t0 = 1_700_000_000_000
    shows = [Event("impression", i, 100 + i, t0 + i, request_id=f"r{i}") for i in range(20)]
    clicks = [Event("click", i, 100 + i, t0 + 1_000 + i, request_id=f"r{i}") for i in range(20)]
    path = tmp_path / "joined.jsonl"
    path.write_bytes(b"\n".join(encode_json(e) for e in [*shows, *clicks]) + b"\n")
    for limit, positives in (("1000", 20), ("5", 5)):
        # (Waiting for the window: each impression is one example; fake negatives
        # would add one per clicked impression.)
        config = load_config(env={}, overrides={"ingest.join_max_pending": limit,
                                                "ingest.delayed_feedback": "wait"})
        summary = evaluate(config, str(path), progress=False)
        assert (summary["examples"], summary["positives"]) == (20, positives), limit


def test_a_restart_under_another_model_config_is_a_one_line_error(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    assert cli("generate", str(events), "--events", "300").returncode == 0
    train = ("train", "--set", "ingest.source=file", "--set", f"ingest.path={events}",
             "--set", "metrics.port=-1", "--set", f"trainer.checkpoint_dir={tmp_path / 'ck'}")
    first = cli(*train)
    assert first.returncode == 0, first.stderr
    again = cli(*train, "--set", "model.embedding_dim=16")
    assert again.returncode == 2, again.stderr
    assert "model.embedding_dim = 8 in the checkpoint, 16 now" in again.stderr
    assert "Traceback" not in again.stderr


def test_features_without_signal_do_not_make_predictions_worse_than_the_click_rate(
        tmp_path: Path) -> None:
    # A log of 40 features, none of which says anything about the label: the
    # default model must learn that, not the noise. Here the constant click
    # rate scores logloss 0.602 and Vowpal Wabbit 0.636 (what any learner pays
    # to find that out in 6,000 events); a full step on every field, crossed
    # in pairs, scored 0.675.
    rng = random.Random(1)
    path = tmp_path / "noise.jsonl"
    with path.open("w") as f:
        for i in range(6000):
            f.write(json.dumps({
                "type": "example", "label": int(rng.random() < 0.3), "user_id": rng.randrange(300),
                "item_id": rng.randrange(500), "timestamp_ms": 1_700_000_000_000 + 1000 * i,
                "features": {f"f{k}": f"v{rng.randrange(21)}" for k in range(38)}}) + "\n")
    result = cli("evaluate", "--events", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    rate = summary["positives"] / summary["examples"]
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert summary["logloss"] < constant + 0.04

"""Quality on logs with many features: ``streamrec evaluate`` with every feature the
log carries (the default), this tree against ``--baseline`` and Vowpal Wabbit.

Real logs come with the features their producers chose, often dozens, most of
them carrying little signal. Two generated shapes, each at several feature
counts, labeled and time-ordered:

- ``noise<F>``: ``F`` categorical features of 21 values each; the click rate
  depends on the first 8 only (log-odds effects drawn once), the others are
  noise; user and item ids carry nothing.
- ``mixed<F>``: the generated log of ``benchmarks/serving_cpu.py``: ``F``
  features of mixed cardinality (3 to 20,000 values, skewed), every one with a
  small effect, plus a user x item effect.

Arms, on one log at a time, scored test-then-train over the whole stream:

- ``streamrec``: ``streamrec evaluate`` of this tree in a child process, one
  torch thread, no feature list (it takes the log's);
- ``full-step-pairs``: the same with every row at full step
  (``model.field_scale = 1``) and every pair of features crossed in the wide
  terms, the defaults up to 12 features carried past them;
- ``baseline``: the default from another checkout (``--baseline DIR``);
- ``vw``: Vowpal Wabbit, logistic loss, 2^24 weights, every feature alone (one
  namespace each, no crosses: with most features noise, the best of its
  configurations here), default adaptive SGD.

    python -m benchmarks.many_features --baseline /path/to/other/checkout
    python -m benchmarks.many_features --logs noise12,noise42 --events 20000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.real_logs import arm_vw, figures
from benchmarks.report import format_table, write_result
from benchmarks.serving_cpu import write_log

ROOT = Path(__file__).resolve().parent.parent
INFORMATIVE = 8


def write_noise_log(path: Path, features: int, events: int, seed: int) -> None:
    """``events`` examples with ``features`` features, the first 8 carrying the signal."""
    rng = random.Random(seed)
    effect = [[rng.gauss(0, 0.7) for _ in range(21)] for _ in range(features)]
    with path.open("w") as out:
        for i in range(events):
            values = [rng.randrange(21) for _ in range(features)]
            z = -1.0 + sum(effect[k][v] for k, v in enumerate(values[:INFORMATIVE])) / 2
            out.write(json.dumps({
                "type": "example", "label": int(rng.random() < 1 / (1 + math.exp(-z))),
                "user_id": rng.randrange(1, 1000), "item_id": rng.randrange(1, 2000),
                "timestamp_ms": 1_700_000_000_000 + 1000 * i, "event_id": f"e{i}",
                "features": {f"f{k}": f"v{v}" for k, v in enumerate(values)}}) + "\n")


def write_vw(jsonl: Path, path: Path) -> torch.Tensor:
    """The log in VW's text format, one namespace per feature; returns the labels."""
    labels = []
    with jsonl.open() as f, path.open("w") as out:
        for line in f:
            e = json.loads(line)
            labels.append(float(e["label"]))
            parts = [f"|u u{e['user_id']}", f"|i i{e['item_id']}"] + [
                f"|{name} {name}_{value}" for name, value in e["features"].items()]
            out.write(("1 " if e["label"] else "-1 ") + " ".join(parts) + "\n")
    return torch.tensor(labels)


def full_step_pairs(log: Path) -> dict[str, str]:
    """The overrides of the ``full-step-pairs`` arm for ``log``."""
    with log.open() as f:
        features = ["user_id", "item_id", *json.loads(f.readline())["features"]]
    pairs = [f"{a}*{b}" for i, a in enumerate(features) for b in features[i + 1:]]
    return {"model.sparse_features": ",".join(features),
            "model.wide_terms": ",".join(features + pairs), "model.field_scale": "1"}


def arm_streamrec(tree: Path, log: Path, overrides: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "streamrec.cli", "evaluate", "--events", str(log), "--quiet",
           "--set", "trainer.threads=1"]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         cwd=tree).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"auc": result["auc"], "logloss": result["logloss"],
            "events_per_s": result["events_per_second"]}


def make_log(name: str, folder: Path, events: int, seed: int) -> Path:
    path = folder / f"{name}.jsonl"
    kind, count = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")):])
    if kind == "noise":  # count: sparse features in all, user and item ids included
        write_noise_log(path, count - 2, events, seed)
    elif kind == "mixed":
        write_log(path, count - 2, events, seed)
    else:
        raise SystemExit(f"--logs: {name!r} is not noise<F> or mixed<F>")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", default="noise12,noise26,noise42,noise102,mixed10,mixed26",
                   help="comma list of noise<F> / mixed<F>, F = sparse features with the "
                        "user and item ids")
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (built) to run as the baseline arm")
    p.add_argument("--out", default="many_features")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.logs.split(","):
            log = make_log(name, folder, args.events, args.seed)
            arms = {"streamrec": arm_streamrec(ROOT, log),
                    "full-step-pairs": arm_streamrec(ROOT, log, full_step_pairs(log))}
            if args.baseline is not None:
                arms["baseline"] = arm_streamrec(args.baseline, log)
            labels = write_vw(log, folder / "log.vw")
            probs, info = arm_vw(folder / "log.vw", [])
            arms["vw"] = {**figures(probs, labels),
                          "events_per_s": len(labels) / info["seconds"]}
            results[name] = arms
            for arm, r in arms.items():
                rows.append([name, arm, f"{r['auc']:.4f}", f"{r['logloss']:.4f}",
                             f"{r['events_per_s']:,.0f}"])
            print(format_table(["log", "arm", "auc", "logloss", "events/s"], rows[-len(arms):]),
                  flush=True)
    print(format_table(["log", "arm", "auc", "logloss", "events/s"], rows))
    path = write_result(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                                   "torch_threads": 1, "logs": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality on real public interaction logs: ``streamrec evaluate`` vs Vowpal Wabbit,
River FFM / FM and a click-rate counter, side by side on the same events.

The logs (benchmarks/real_data.py) are read from the packages that ship them:
MovieLens 100K (``ml100k``, the one the defaults were chosen on) and MovieLens
latest-small (``mlsmall``, held out: no default was tuned on it). Each is
written as streamrec JSONL in two forms, labeled (``type: example``) and as
production sends it (an ``impression`` per rating, a ``click`` with the same
request id a few seconds later for positives), and in VW's text format.

Every arm is scored test-then-train (progressive validation: each event is
predicted before it is learned) over the whole stream, on one CPU core (the
process and its children are pinned to it):

- ``streamrec``: the ``streamrec evaluate`` command in a child process, JSON
  parsing included, one torch thread, every feature of the log passed with
  ``--set model.sparse_features=...``; its events/s is the command's own
  (reading, decoding, joining, batching and training; not the interpreter's
  start). ``streamrec-ids`` reads only user_id and item_id (the default
  feature list), ``streamrec-no-wide`` turns the wide terms off,
  ``streamrec-joined`` runs on the production form (its scores: those served
  on arrival), ``streamrec-joined-no-wide`` there without wide terms; ``--sweep`` adds every
  other configuration tried (``SWEEP``) and ``--variant`` more;
- ``vw ...``: Vowpal Wabbit (the ``vowpalwabbit`` package's own driver and
  text parser, timed from start to finish of the pass), logistic loss, 2^24
  hashed weights, all pairwise namespace crosses (``-q ::``) with its default
  adaptive SGD at several learning rates and with FTRL at several alphas, and
  linear without crosses. ``vw-best`` is the one with the highest AUC;
- ``river-ffm`` / ``river-fm``: River's FFMClassifier / FMClassifier, event by event;
- ``counter``: smoothed per-user and per-item click rates so far, combined as
  log-odds lifts over the running click rate.

Speed on a shared machine swings between runs, so after the arms the default
streamrec arm and the best VW configuration run alternately ``--repeat`` times
and the best events/s of each gives the ratio.

    pip install -r requirements-bench.txt
    pip install --no-deps -r requirements-data.txt
    python -m benchmarks.real_logs                     # both logs, ~10 min
    python -m benchmarks.real_logs --logs ml100k --sweep --arms streamrec
    python -m benchmarks.real_logs --variant "b1024:trainer.batch_size=1024"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import real_data
from benchmarks.quality import variant
from benchmarks.report import format_table, write_result
from streamrec.trainer.progressive import ProgressiveMetrics

Scored = tuple[list[float] | None, dict[str, Any]]  # (probabilities or None, figures)

# Every streamrec configuration tried on the real logs, beyond the named arms
# (config overrides; the log's features are always passed).
SWEEP: dict[str, dict[str, str]] = {
    "b1024-w256": {"trainer.batch_size": "1024", "trainer.warmup_batch_size": "256"},
    "b2048": {"trainer.batch_size": "2048"},
    "b256": {"trainer.batch_size": "256", "trainer.warmup_batch_size": "0"},
    "w256": {"trainer.warmup_batch_size": "256"},
    "lr0.01": {"table_defaults.lr": "0.01"},
    "lr0.05": {"table_defaults.lr": "0.05"},
    "lr0.1": {"table_defaults.lr": "0.1"},
    "dim4": {"model.embedding_dim": "4"},
    "dim16": {"model.embedding_dim": "16"},
    "history-cap50": {"model.history_cap": "50"},
    "history-all": {"model.history_features": "ALL"},
    "no-history": {"model.history_features": ""},
    "no-history-no-adapt": {"model.history_features": "", "model.in_batch_terms": ""},
    "adapt-user-only": {"model.in_batch_terms": "user_id"},
    "adapt-s5": {"model.in_batch_strength": "5"},
    "adapt-w4": {"model.in_batch_weight": "4"},
    "deepfm": {"model.hidden": "64,32"},
    "b1024-w256-dim16": {"trainer.batch_size": "1024", "trainer.warmup_batch_size": "256",
                         "model.embedding_dim": "16"},
    "b2048-dim16": {"trainer.batch_size": "2048", "model.embedding_dim": "16"},
    "adapt-s20": {"model.in_batch_strength": "20"},
    "wide-lr0.3": {"model.wide_lr": "0.3"},
    "wide-lr1": {"model.wide_lr": "1"},
    "wide-lr3": {"model.wide_lr": "3"},
    "wide-lr6": {"model.wide_lr": "6"},
    "wide-user-genres": {"model.wide_terms": "user_id,user_id*genres"},
}

VW_CONFIGS: dict[str, list[str]] = {
    "vw linear": [],
    "vw -q :: l=0.1": ["-q", "::", "-l", "0.1"],
    "vw -q :: l=0.25": ["-q", "::", "-l", "0.25"],
    "vw -q :: l=0.5": ["-q", "::"],
    "vw -q :: l=1": ["-q", "::", "-l", "1"],
    "vw -q :: ftrl a=0.01": ["-q", "::", "--ftrl", "--ftrl_alpha", "0.01"],
    "vw -q :: ftrl a=0.05": ["-q", "::", "--ftrl", "--ftrl_alpha", "0.05"],
    "vw -q :: ftrl a=0.1": ["-q", "::", "--ftrl", "--ftrl_alpha", "0.1"],
}


def _vw_token(value: str) -> str:
    return value.replace(" ", "_").replace(":", "_").replace("|", "_")


def write_inputs(rows: list[real_data.Rating], features: list[str], folder: Path
                 ) -> dict[str, Path]:
    """The log as labeled and production JSONL and as VW text, under ``folder``."""
    paths = {"labeled": folder / "labeled.jsonl", "joined": folder / "production.jsonl",
             "vw": folder / "log.vw"}
    with paths["labeled"].open("w") as f:
        for event in real_data.labeled_events(rows):
            f.write(json.dumps(event) + "\n")
    with paths["joined"].open("w") as f:
        for event in real_data.production_events(rows):
            f.write(json.dumps(event) + "\n")
    # One namespace per feature, named by a distinct letter (-q :: crosses them all).
    letters = dict(zip(["user_id", "item_id", *features], "uiabcdefgh"))
    with paths["vw"].open("w") as f:
        for r in rows:
            values: dict[str, list[str]] = {"user_id": [str(r.user)], "item_id": [str(r.item)]}
            for name in features:
                v = r.features[name]
                values[name] = [str(x) for x in v] if isinstance(v, list) else [str(v)]
            f.write(("1" if r.label else "-1") + "".join(
                f" |{letters[n]} " + " ".join(f"{letters[n]}{_vw_token(x)}" for x in vs)
                for n, vs in values.items()) + "\n")
    return paths


def arm_streamrec(path: Path, features: list[str], overrides: dict[str, str]) -> Scored:
    """``streamrec evaluate`` in a child process; its own figures."""
    settings = {"trainer.threads": "1",
                "model.sparse_features": ",".join(["user_id", "item_id", *features]),
                **overrides}
    if settings.get("model.history_features") == "ALL":
        settings["model.history_features"] = settings["model.sparse_features"]
    cmd = [sys.executable, "-m", "streamrec.cli", "evaluate", "--events", str(path), "--quiet"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return None, {"auc": result["auc"], "logloss": result["logloss"],
                  "events_per_s": result["events_per_second"], "overrides": overrides,
                  "events": result["events"], "examples": result["examples"]}


def arm_vw(path: Path, args: list[str]) -> Scored:
    import vowpalwabbit

    with tempfile.NamedTemporaryFile(suffix=".txt") as pred:
        started = time.perf_counter()
        vw = vowpalwabbit.Workspace(arg_list=["--quiet", "-b", "24", "--loss_function",
                                              "logistic", "--link", "logistic", *args,
                                              "-d", str(path), "-p", pred.name])
        vw.finish()
        seconds = time.perf_counter() - started
        probs = [float(line.split()[0]) for line in Path(pred.name).read_text().splitlines()]
    return probs, {"seconds": seconds, "args": args}


def _river_x(r: real_data.Rating) -> dict[str, float]:
    # FFM fields are what comes before the first "_".
    x = {f"user_{r.user}": 1.0, f"item_{r.item}": 1.0}
    for name, v in r.features.items():
        for value in (v if isinstance(v, list) else [v]):
            x[f"{name}_{value}"] = 1.0
    return x


def arm_river(rows: list[real_data.Rating], kind: str, seed: int) -> Scored:
    from river import facto

    model: Any = (facto.FFMClassifier(n_factors=8, seed=seed) if kind == "ffm"
                  else facto.FMClassifier(n_factors=8, seed=seed))
    xs = [_river_x(r) for r in rows]
    probs = []
    started = time.perf_counter()
    for x, r in zip(xs, rows):
        probs.append(model.predict_proba_one(x).get(True, 0.5))
        model.learn_one(x, bool(r.label))
    return probs, {"seconds": time.perf_counter() - started}


def arm_counter(rows: list[real_data.Rating], strength: float = 10.0) -> Scored:
    users: dict[int, list[float]] = {}
    items: dict[int, list[float]] = {}
    clicks, seen = 1.0, 2.0
    probs = []

    def lift(table: dict[int, list[float]], key: int, prior: float) -> float:
        n, c = table.get(key, (0.0, 0.0))
        rate = (c + strength * prior) / (n + strength)
        return math.log(rate / (1 - rate)) - math.log(prior / (1 - prior))

    started = time.perf_counter()
    for r in rows:
        prior = clicks / seen
        logit = math.log(prior / (1 - prior)) + lift(users, r.user, prior) + \
            lift(items, r.item, prior)
        probs.append(1 / (1 + math.exp(-logit)))
        for table, key in ((users, r.user), (items, r.item)):
            n, c = table.get(key, (0.0, 0.0))
            table[key] = [n + 1, c + r.label]
        seen += 1
        clicks += r.label
    return probs, {"seconds": time.perf_counter() - started}


def figures(probs: list[float], labels: torch.Tensor) -> dict[str, float]:
    m = ProgressiveMetrics(window=1)
    m.update(torch.tensor(probs, dtype=torch.float64).clamp(1e-7, 1 - 1e-7), labels)
    return {"auc": m.auc, "logloss": m.logloss}


def run_log(name: str, args: argparse.Namespace, variants: dict[str, dict[str, str]]
            ) -> dict[str, Any]:
    rows = real_data.load(name)
    features = real_data.FEATURES[name]
    labels = torch.tensor([float(r.label) for r in rows], dtype=torch.float64)
    wanted = set(args.arms.split(","))
    arms: dict[str, Callable[[], Scored]] = {}
    with tempfile.TemporaryDirectory(prefix="streamrec-real-logs-") as tmp:
        paths = write_inputs(rows, features, Path(tmp))
        if "streamrec" in wanted:
            arms["streamrec"] = lambda: arm_streamrec(paths["labeled"], features, {})
            arms["streamrec-ids"] = lambda: arm_streamrec(
                paths["labeled"], [], {})
            arms["streamrec-no-wide"] = lambda: arm_streamrec(
                paths["labeled"], features, {"model.wide_terms": ""})
            arms["streamrec-joined"] = lambda: arm_streamrec(paths["joined"], features, {})
            arms["streamrec-joined-no-wide"] = lambda: arm_streamrec(
                paths["joined"], features, {"model.wide_terms": ""})
            for label, overrides in variants.items():
                arms[f"streamrec {label}"] = (
                    lambda o=overrides: arm_streamrec(paths["labeled"], features, o))
        if "vw" in wanted:
            for label, vw_args in VW_CONFIGS.items():
                arms[label] = lambda a=vw_args: arm_vw(paths["vw"], a)
        if "river" in wanted:
            arms["river-ffm"] = lambda: arm_river(rows, "ffm", args.seed)
            arms["river-fm"] = lambda: arm_river(rows, "fm", args.seed)
        if "counter" in wanted:
            arms["counter"] = lambda: arm_counter(rows)
        results: dict[str, dict[str, Any]] = {}
        for arm, run in arms.items():
            print(f"{name}: {arm} ...", file=sys.stderr, flush=True)
            probs, fig = run()
            if probs is not None:
                fig.update(figures(probs, labels))
                fig["events_per_s"] = len(rows) / fig.pop("seconds")
            results[arm] = fig
        vw = {k: v for k, v in results.items() if k.startswith("vw ")}
        best = max(vw, key=lambda k: vw[k]["auc"]) if vw else None
        timing = _timing(paths, features, VW_CONFIGS[best or "vw -q :: l=0.5"], args.repeat) \
            if args.repeat and {"streamrec", "vw"} <= wanted else None
    speed = results[best]["events_per_s"] if best else None
    table = [[arm + (" (vw-best)" if arm == best else ""), f"{f['auc']:.4f}",
              f"{f['logloss']:.4f}", f["events_per_s"],
              round(f["events_per_s"] / speed, 2) if speed else "-"]
             for arm, f in results.items()]
    print(f"\n{name}: {len(rows):,} events, {int(labels.sum()):,} positives, "
          f"features {['user_id', 'item_id', *features]}")
    print(format_table(["arm", "AUC", "logloss", "events/s", "x vw-best"], table))
    if timing:
        print(f"timing, {args.repeat} alternating runs each, best events/s: streamrec "
              f"{timing['streamrec']:,.0f}, {best or 'vw -q ::'} {timing['vw']:,.0f}, "
              f"ratio {timing['ratio']:.2f}")
    return {"events": len(rows), "positives": int(labels.sum()), "features": features,
            "vw_best": best, "arms": results, "timing": timing}


def _timing(paths: dict[str, Path], features: list[str], vw_args: list[str], repeat: int
            ) -> dict[str, float]:
    """Best events/s of the default streamrec arm and of VW's, run alternately
    ``repeat`` times each: on a shared machine one run of each is a coin toss."""
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(arm_streamrec(paths["labeled"], features, {})[1]["events_per_s"])
        probs, fig = arm_vw(paths["vw"], vw_args)
        assert probs is not None
        theirs.append(len(probs) / fig["seconds"])
    return {"streamrec": max(ours), "vw": max(theirs), "ratio": max(ours) / max(theirs),
            "streamrec_runs": ours, "vw_runs": theirs, "vw_args": vw_args}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--logs", default=",".join(real_data.LOGS))
    p.add_argument("--arms", default="streamrec,vw,river,counter",
                   help="groups of arms: streamrec, vw, river, counter")
    p.add_argument("--sweep", action="store_true", help="also every configuration in SWEEP")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:key=value;...",
                   help="an extra streamrec arm with these config overrides (repeatable)")
    p.add_argument("--core", type=int, default=None,
                   help="CPU core to pin every arm to (default: the last one allowed)")
    p.add_argument("--repeat", type=int, default=3,
                   help="alternating timing runs of streamrec and the best VW (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="real_logs", help="result file name under results/")
    args = p.parse_args(argv)
    unknown = [n for n in args.logs.split(",") if n not in real_data.LOGS]
    if unknown:
        p.error(f"unknown log(s) {unknown}; known: {', '.join(real_data.LOGS)}")
    variants = dict(SWEEP) if args.sweep else {}
    for spec in args.variant:
        try:
            label, overrides = variant(spec)
        except ValueError as e:
            p.error(str(e))
        variants[label] = overrides
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # children (streamrec evaluate, VW's threads) inherit it
    torch.set_num_threads(1)
    logs = {name: run_log(name, args, variants) for name in args.logs.split(",")}
    write_result(args.out, {"args": vars(args), "core": core, "logs": logs})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``streamrec evaluate``'s speed on joined and labeled streams: this tree against a baseline.

Each arm runs ``streamrec evaluate`` in a child process with one torch thread,
from this repository (``this``) or from a baseline checkout (``--baseline``: a
``git worktree add`` of another commit, its native extensions built), on:

- ``ml100k-labeled`` / ``ml100k-joined``: MovieLens 100K as benchmarks/real_data.py
  writes it, labeled examples and in production form (an impression per rating,
  a click seconds later for the positives);
- ``synthetic-labeled`` / ``synthetic-joined``: ``streamrec generate --preset
  production`` (``--events`` of them; list and dense features), both forms,
  evaluated with its 60 s join window.

The model takes every feature the file carries (evaluate's default). The
batch delay is set past the run's length (``trainer.max_batch_delay_s``), so
that steps are the same whatever the machine's load: both trees then learn the
same batches and must report the same AUC and logloss (``same_metrics``).
Speed is the command's own events/s (reading, decoding, joining, batching and
training; not the interpreter's start), best of ``--repeat`` runs taken
alternately from both trees, and events per CPU second of the command (after
its imports; other processes disturb it less on a shared machine), best of
the same runs. Writes results/<--out>.json.

    git worktree add /tmp/joinfast_base main
    (cd /tmp/joinfast_base && python setup.py build_ext --inplace -q)
    python -m benchmarks.joined_speed --baseline /tmp/joinfast_base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import real_data
from benchmarks.real_logs import write_inputs
from benchmarks.report import format_table, write_result

ROOT = Path(__file__).resolve().parents[1]
# Past any run's length: steps never leave early because the machine was slow.
NO_DELAY = {"trainer.max_batch_delay_s": "100000", "trainer.threads": "1"}


def inputs(folder: Path, events: int) -> dict[str, tuple[Path, dict[str, str]]]:
    """The event files, by arm name, with the settings each is evaluated with."""
    rows = real_data.load("ml100k")
    ml = write_inputs(rows, list(rows[0].features), folder)
    files = {"ml100k-labeled": (ml["labeled"], {}), "ml100k-joined": (ml["joined"], {})}
    for form in ("labeled", "joined"):
        path = folder / f"synthetic-{form}.jsonl"
        subprocess.run([sys.executable, "-m", "streamrec.cli", "generate", str(path),
                        "--events", str(events), "--preset", "production", "--form", form],
                       check=True, cwd=ROOT, capture_output=True)
        files[f"synthetic-{form}"] = (path, {"ingest.join_window_s": "60"})
    return files


# The command in a child, and the CPU seconds it took after its imports (a
# figure that other processes on a shared machine disturb less than wall time).
_CHILD = """import json, sys, time
import streamrec.cli.commands as commands, streamrec.cli.evaluate
started = time.process_time()
code = commands.main(sys.argv[1:])
print(json.dumps({"cpu_seconds": time.process_time() - started}))
sys.exit(code)
"""


def run_evaluate(tree: Path, path: Path, settings: dict[str, str]) -> dict[str, Any]:
    """``streamrec evaluate`` of ``tree``'s code on ``path``: its JSON result, and
    ``cpu_seconds``."""
    cmd = [sys.executable, "-c", _CHILD, "evaluate", "--events", str(path), "--quiet"]
    for key, value in {**NO_DELAY, **settings}.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree, env=env)
    *_, result, cpu = out.stdout.strip().splitlines()
    return {**json.loads(result), **json.loads(cpu)}


def _commit(tree: Path) -> str:
    """``tree``'s checked-out commit, with ``+`` when its files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                           check=True, capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=Path, required=True,
                   help="a checkout of the commit to compare with, native extensions built")
    p.add_argument("--events", type=int, default=100_000, help="synthetic events per form")
    p.add_argument("--repeat", type=int, default=3, help="runs per tree and file, alternated")
    p.add_argument("--arms", default="", help="comma-separated subset of the files")
    p.add_argument("--out", default="joined_speed")
    args = p.parse_args(argv)
    trees = {"baseline": args.baseline.resolve(), "this": ROOT}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = inputs(Path(tmp), args.events)
        if args.arms:
            files = {k: v for k, v in files.items() if k in args.arms.split(",")}
        for _ in range(args.repeat):
            for name, (path, settings) in files.items():
                for tree_name, tree in trees.items():
                    print(f"{name} {tree_name} ...", file=sys.stderr, flush=True)
                    got = run_evaluate(tree, path, settings)
                    arm = results.setdefault(name, {}).setdefault(tree_name, {
                        "events": got["events"], "examples": got["examples"],
                        "auc": got["auc"], "logloss": got["logloss"], "events_per_s": 0.0,
                        "events_per_cpu_s": 0.0, "runs_events_per_s": [], "runs_cpu_s": []})
                    arm["runs_events_per_s"].append(got["events_per_second"])
                    arm["runs_cpu_s"].append(round(got["cpu_seconds"], 3))
                    arm["events_per_s"] = max(arm["events_per_s"], got["events_per_second"])
                    arm["events_per_cpu_s"] = round(got["events"] / min(arm["runs_cpu_s"]), 1)
    rows = []
    for name, arm in results.items():
        base, this = arm["baseline"], arm["this"]
        arm["ratio"] = round(this["events_per_s"] / base["events_per_s"], 3)
        arm["cpu_ratio"] = round(this["events_per_cpu_s"] / base["events_per_cpu_s"], 3)
        arm["same_metrics"] = (base["auc"], base["logloss"]) == (this["auc"], this["logloss"])
        rows.append([name, base["events"], base["events_per_s"], this["events_per_s"],
                     arm["ratio"], base["events_per_cpu_s"], this["events_per_cpu_s"],
                     arm["cpu_ratio"], this["auc"], this["logloss"], str(arm["same_metrics"])])
    print(format_table(["file", "events", "baseline events/s", "this events/s", "x baseline",
                        "baseline events/cpu s", "this events/cpu s", "x baseline",
                        "AUC", "logloss", "same AUC, logloss"], rows))
    # The same log's impressions per second, joined against labeled (1.0: as fast).
    versus = {}
    for log in ("ml100k", "synthetic"):
        labeled, joined = results.get(f"{log}-labeled"), results.get(f"{log}-joined")
        if labeled and joined:
            versus[log] = {f"{tree} {unit}": round(
                (joined[tree][unit] / joined[tree]["events"])
                / (labeled[tree][unit] / labeled[tree]["events"]), 3)
                for tree in trees for unit in ("events_per_s", "events_per_cpu_s")}
            print(f"{log}: joined impressions/s over labeled examples/s: {versus[log]}")
    commits = {name: _commit(tree) for name, tree in trees.items()}
    write_result(args.out, {"args": {**vars(args), "baseline": str(args.baseline)},
                            "commits": commits, "arms": results,
                            "joined_vs_labeled_impressions": versus})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training step time of this tree against a baseline commit, step by step side by side.

Each arm is a subprocess that imports ``streamrec`` from its own source tree (the
baseline extracted with ``git archive``) and holds an ``OnlineTrainer`` over the same
seeded synthetic batches; the parent has the arms take one step in turn, so that
the machine's noise falls on both alike, and reports per config the median step of
each arm and the median of the per-step ratios. Configs: the default (every
unsharded table fused in one store), ``sharded`` (``table_defaults.shards = 4``: one
store per table) and ``shared`` (user and item ids in one table; this tree only).

Run from the repository root::

    python -m benchmarks.table_store --baseline main   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "default": {},
    "sharded": {"table_defaults.shards": "4"},
    "shared": {"tables.ids.features": "user_id,item_id"},
}
ROOT = Path(__file__).resolve().parent.parent


def child(tree: str, config_name: str, steps: int, batch: int) -> None:
    """Train one batch per line read from stdin; print each step's seconds."""
    sys.path.insert(0, tree)
    import torch

    torch.set_num_threads(1)
    from streamrec.config import load_config
    from streamrec.ingest.batch import Batcher
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.trainer import OnlineTrainer

    config = load_config(env={}, overrides={
        "trainer.batch_size": str(batch), "trainer.warmup_batch_size": "0",
        "table_defaults.ttl_s": "30", "table_defaults.min_count": "2",
        **CONFIGS[config_name]})
    # (The baseline may predate OnlineTrainer.from_config and TrainerParameters.)
    if hasattr(OnlineTrainer, "from_config"):
        from streamrec.trainer.parameters import TrainerParameters
        trainer = OnlineTrainer.from_config(config)
        source = TrainerParameters(trainer)
    else:
        trainer = source = OnlineTrainer(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    events = SyntheticStream(default()).events(steps * batch)
    batches = [batcher.build([next(events) for _ in range(batch)]) for _ in range(steps)]
    print("ready", flush=True)
    for k, b in enumerate(batches):
        sys.stdin.readline()
        t0 = time.perf_counter()
        trainer.train_batch(b)
        source.collect_delta(k + 1)  # as parameter sync does, every step
        print(time.perf_counter() - t0, flush=True)


def side_by_side(trees: dict[str, Path], config_name: str, args: argparse.Namespace
                 ) -> dict[str, list[float]]:
    """Per arm, the seconds of each step after the warm-up, the arms stepping in turn."""
    procs = {arm: subprocess.Popen(
        [sys.executable, "-m", "benchmarks.table_store", "--child", str(tree),
         "--config", config_name, "--steps", str(args.steps + args.warmup),
         "--batch", str(args.batch)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}) for arm, tree in trees.items()}
    times: dict[str, list[float]] = {arm: [] for arm in procs}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for k in range(args.steps + args.warmup):
            order = list(procs) if k % 2 == 0 else list(reversed(procs))
            for arm in order:
                proc = procs[arm]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("step\n")
                proc.stdin.flush()
                seconds = float(proc.stdout.readline())
                if k >= args.warmup:
                    times[arm].append(seconds)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare against")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config, args.steps, args.batch)
        return
    from benchmarks.report import format_table, write_result

    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for config_name in CONFIGS:
            trees = {"this tree": ROOT} if config_name == "shared" else \
                {"baseline": base, "this tree": ROOT}  # (the baseline shares no tables)
            times = side_by_side(trees, config_name, args)
            entry = {f"{arm} median ms": 1000 * statistics.median(t) for arm, t in times.items()}
            if "baseline" in times:
                entry["median per-step ratio"] = statistics.median(
                    a / b for a, b in zip(times["this tree"], times["baseline"]))
            figures[config_name] = entry
    rows = [[name, *(f"{e.get(k, float('nan')):.3f}" for k in (
        "baseline median ms", "this tree median ms", "median per-step ratio"))]
        for name, e in figures.items()]
    print(format_table(["config", "baseline ms/step", "this tree ms/step",
                        "ratio (this / baseline)"], rows))
    write_result("table_store", {"args": vars(args), "configs": figures})


if __name__ == "__main__":
    main()

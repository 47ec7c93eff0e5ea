"""The trainer's step alone (no broker), one process against 2 ranks: time and collectives.

Each arm trains ``--steps`` global batches of the ``drifting`` synthetic stream
(same batches, same config as benchmarks/ranks.py: 5 sparse features, no
history features), one torch thread per process. The 2-rank arm is started by
torchrun; every rank trains an equal slice of each global batch, and counts
and times the torch.distributed calls of its steps (a wrapper around each).
Reported: median step (ms) and events/s of each arm, CPU seconds per step,
collectives per step and their share of the step.

    python -m benchmarks.rank_steps                  # 60 steps of 4096
    python -m benchmarks.rank_steps --steps 20 --batch-size 16384
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.report import format_table, write_result

WARMUP = 5
_COLLECTIVES = ("all_reduce", "all_gather", "all_to_all_single", "broadcast", "gather")


def _config(batch_size: int) -> Any:
    from streamrec.config import load_config

    return load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price",
        "model.history_features": "",
        "model.in_batch_terms": "",
        "trainer.batch_size": str(batch_size),
    })


class _Counted:
    """Wraps torch.distributed's collectives, counting calls and wall seconds by name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        for name in _COLLECTIVES:
            setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[name] += 1
                self.seconds[name] += time.perf_counter() - start
        return timed

    def reset(self) -> None:
        self.calls.clear()
        self.seconds.clear()


def run(steps: int, batch_size: int, out: Path | None) -> dict[str, Any]:
    """Trains ``steps`` global batches in this process (one rank of several under torchrun)."""
    from streamrec.ingest.batch import Batcher
    from streamrec.synthetic import PRESETS, SyntheticStream
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    distributed = "WORLD_SIZE" in os.environ  # started by torchrun
    counted = _Counted()
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    cfg = _config(batch_size)
    trainer = OnlineTrainer.from_config(cfg, distributed=distributed)
    batcher = Batcher(cfg.model.sparse_features, cfg.model.dense_features)
    events = SyntheticStream(PRESETS["drifting"]()).events(batch_size * (steps + WARMUP))
    batches = []
    for _ in range(steps + WARMUP):
        chunk = list(itertools.islice(events, batch_size))
        share = len(chunk) // world
        batches.append(batcher.build(chunk[rank * share:(rank + 1) * share]))
    times, cpu = [], 0.0
    for i, batch in enumerate(batches):
        if i == WARMUP:
            counted.reset()
            if distributed:
                dist.barrier()
            cpu_start = time.process_time()
        start = time.perf_counter()
        trainer.train_batch(batch)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    figures = {"median_step_ms": 1000 * statistics.median(times),
               "mean_step_ms": 1000 * statistics.fmean(times),
               "cpu_ms_per_step": 1000 * cpu / steps,
               "collectives_per_step": sum(counted.calls.values()) / steps,
               "collective_ms_per_step": 1000 * sum(counted.seconds.values()) / steps,
               "by_collective": {n: {"per_step": c / steps,
                                     "ms_per_step": 1000 * counted.seconds[n] / steps}
                                 for n, c in counted.calls.items()}}
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if out is not None:
        out.write_text(json.dumps(figures))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4096, help="the global batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="rank_steps", help="results/<out>.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        run(args.steps, args.batch_size,
            args.worker if os.environ.get("RANK", "0") == "0" else None)
        return 0

    from tests.integration.processes import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[dict[str, Any]]] = {"1-rank": [], "2-ranks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for arm, ranks in (("1-rank", 1), ("2-ranks", 2)):
                out = Path(tmp) / f"{arm}-{r}.json"
                launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                            "--master-addr", "127.0.0.1", "--master-port", str(free_port())
                            ] if ranks > 1 else []
                subprocess.run([sys.executable, *launcher, "-m", "benchmarks.rank_steps",
                                "--steps", str(args.steps), "--batch-size",
                                str(args.batch_size), "--worker", str(out)],
                               check=True, env=env)
                runs[arm].append(json.loads(out.read_text()))
                print(f"round {r + 1} {arm}: {runs[arm][-1]}", file=sys.stderr, flush=True)
    arms = {}
    for arm, figs in runs.items():
        step = statistics.median(f["median_step_ms"] for f in figs)
        arms[arm] = {"median_step_ms": step, "events_per_s": args.batch_size / step * 1000,
                     "cpu_ms_per_step": statistics.median(f["cpu_ms_per_step"] for f in figs),
                     "collectives_per_step": figs[0]["collectives_per_step"],
                     "collective_ms_per_step": statistics.median(
                         f["collective_ms_per_step"] for f in figs),
                     "by_collective": figs[0]["by_collective"], "runs": figs}
    print(f"\nstep of a global batch of {args.batch_size} (drifting stream, 5 sparse features), "
          f"one torch thread per process, median of {args.rounds} rounds")
    print(format_table(["arm", "step ms", "events/s", "CPU ms/step (rank 0)", "collectives/step",
                        "collective ms/step"],
                       [[arm, round(a["median_step_ms"], 2), round(a["events_per_s"]),
                         round(a["cpu_ms_per_step"], 2), a["collectives_per_step"],
                         round(a["collective_ms_per_step"], 2)] for arm, a in arms.items()]))
    two = arms["2-ranks"]
    print(format_table(["collective (2 ranks)", "per step", "ms per step"],
                       [[n, v["per_step"], round(v["ms_per_step"], 2)]
                        for n, v in two["by_collective"].items()]))
    ratio = arms["1-rank"]["median_step_ms"] / two["median_step_ms"]
    print(f"2 ranks over 1, events/s: {ratio:.2f}x")
    write_result(args.out, {"args": vars(args), "arms": arms,
                            "ratios": {"events_per_s_2_over_1": ratio}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU per Predict and per delta in process: what a replica pays, per model shape.

A log of ``--features`` categorical features (plus user and item ids; skewed
values, a click rate set by single features and the user x item pair) is
generated with a fixed seed; a trainer learns its first ``--train`` events and a
replica takes its snapshot; then ``--requests`` Predicts of ``--candidates``
candidates each (half of the features sent once with the request, the others
as per-candidate columns, as the gRPC server passes them) are scored with
``predict_columns`` and timed in process CPU seconds, as are the deltas of the
batches after (one each) that the replica applies, and the part of that during
which its writer lock holds every request back. Each
model is measured with the default wide terms and without them
(``model.wide_terms = ""``).

With ``--baseline DIR`` (a checkout built with ``setup.py build_ext
--inplace``) every measurement also runs from that tree, alternating with this
one round by round in fresh processes, so a change in the machine's load hits
both alike. One torch thread.

    python -m benchmarks.serving_cpu                          # 8 and 24 features
    python -m benchmarks.serving_cpu --baseline /tmp/main-before
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_log(path: Path, features: int, events: int, seed: int) -> None:
    """``events`` labeled examples with ``features`` categorical features (``f0``...)."""
    rng = random.Random(seed)
    cards = [rng.choice([3, 10, 50, 300, 2000, 20000]) for _ in range(features)]
    weights = [[rng.gauss(0, 0.7) for _ in range(min(c, 5000))] for c in cards]
    with open(path, "w") as out:
        for i in range(events):
            values = [int(rng.paretovariate(1.2)) % c for c in cards]
            user, item = rng.randrange(3000), rng.randrange(5000)
            z = -1.5 + 0.3 * sum(w[v % len(w)] for w, v in zip(weights, values)) \
                + (0.5 if (user * 7 + item) % 5 == 0 else 0.0)
            label = int(rng.random() < 1 / (1 + math.exp(-z)))
            out.write(json.dumps({
                "type": "example", "label": label, "user_id": user, "item_id": item,
                "timestamp_ms": 1_700_000_000_000 + 100 * i, "event_id": f"e{i}",
                "features": {f"f{k}": str(v) for k, v in enumerate(values)}}) + "\n")


def measure(log: str, wide: bool, train: int, requests: int, candidates: int
            ) -> tuple[float, float, float]:
    """CPU ms per Predict, per delta applied (one training batch's) and of that
    with the writer lock held, run in a process whose ``streamrec`` is the tree
    measured."""
    import torch
    from prometheus_client import CollectorRegistry

    from streamrec.config import load_config
    from streamrec.ingest.batch import Batcher
    from streamrec.ingest.decode import decode_json
    from streamrec.serving.replica import ModelReplica
    from streamrec.trainer.parameters import TrainerParameters
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    events = [decode_json(line) for line in open(log, "rb").read().splitlines()]
    names = sorted(events[0].features)
    overrides = {"model.sparse_features": ",".join(["user_id", "item_id", *names]),
                 "trainer.threads": "1"}
    if not wide:
        overrides["model.wide_terms"] = ""
    config = load_config(env={}, overrides=overrides)
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    size = config.trainer.batch_size
    for start in range(0, train, size):
        trainer.train_batch(batcher.build(events[start:min(start + size, train)]))
    replica = ModelReplica(CollectorRegistry())
    parameters = TrainerParameters(trainer)
    replica.apply(parameters.snapshot(1))
    parameters.collect_delta(1)  # (the next delta starts from the snapshot's rows)
    # Deltas of one batch each, from the events after those learned (the replica
    # holds every request back while it applies one).
    deltas = []
    for version, start in enumerate(range(train, len(events) - size, size), start=2):
        trainer.train_batch(batcher.build(events[start:start + size]))
        deltas.append(parameters.collect_delta(version))
    held = [0.0]  # CPU seconds the writer lock is held: every request waits meanwhile
    acquire, release = replica._lock.acquire_write, replica._lock.release_write

    def acquire_write() -> None:
        acquire()
        held.append(time.process_time())

    def release_write() -> None:
        held[0] += time.process_time() - held.pop()
        release()

    replica._lock.acquire_write, replica._lock.release_write = acquire_write, release_write
    start_cpu = time.process_time()
    for delta in deltas:
        replica.apply(delta)
    apply_ms = (time.process_time() - start_cpu) / max(len(deltas), 1) * 1e3
    locked_ms = held[0] / max(len(deltas), 1) * 1e3
    shared, own = names[: len(names) // 2], names[len(names) // 2:]
    rng = random.Random(1)
    calls = []
    for _ in range(requests):
        at = rng.randrange(train, len(events) - candidates)
        request, shown = events[at], events[at + 1: at + 1 + candidates]
        calls.append((request.user_id, [e.item_id for e in shown],
                      {f: request.features[f] for f in shared},
                      {f: [e.features[f][0] for e in shown] for f in own}))
    for call in calls[:5]:  # warm-up
        replica.predict_columns(*call)
    start_cpu = time.process_time()
    for call in calls:
        replica.predict_columns(*call)
    return (time.process_time() - start_cpu) / len(calls) * 1e3, apply_ms, locked_ms


def _run(tree: Path, log: Path, wide: bool, args: argparse.Namespace
         ) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(log),
         "--wide" if wide else "--no-wide", "--train", str(args.train),
         "--requests", str(args.requests), "--candidates", str(args.candidates)],
        cwd=tree, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"})
    predict_ms, apply_ms, locked_ms = out.stdout.strip().splitlines()[-1].split()
    return float(predict_ms), float(apply_ms), float(locked_ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", default="8,24", help="comma list: features per log")
    p.add_argument("--events", type=int, default=30_000, help="events per generated log")
    p.add_argument("--train", type=int, default=20_000, help="events learned first")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", metavar="DIR", help="a checkout to compare against")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--wide", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-wide", dest="wide", action="store_false", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(*measure(args.measure, args.wide, args.train, args.requests, args.candidates))
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks.report import format_table, write_result

    trees = {"this": ROOT, **({"baseline": Path(args.baseline)} if args.baseline else {})}
    ms: dict[str, list[float]] = {}
    apply_ms: dict[str, list[float]] = {}
    locked_ms: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="serving_cpu_") as tmp:
        logs = {}
        for n in (int(f) for f in args.features.split(",")):
            logs[n] = Path(tmp) / f"log{n}.jsonl"
            write_log(logs[n], n, args.events, seed=n)
        for r in range(args.rounds):
            for n, log in logs.items():
                for wide in (True, False):
                    for name, tree in trees.items():
                        key = f"{name} {n} features{'' if wide else ' no wide'}"
                        predict, applied, locked = _run(tree, log, wide, args)
                        ms.setdefault(key, []).append(predict)
                        apply_ms.setdefault(key, []).append(applied)
                        locked_ms.setdefault(key, []).append(locked)
                        print(f"round {r + 1}: {key}: {predict:.2f} ms per Predict, "
                              f"{applied:.2f} ms per delta ({locked:.2f} locked)",
                              file=sys.stderr)
    rows = [[k, f"{statistics.median(v):.2f}", " ".join(f"{x:.2f}" for x in v),
             f"{statistics.median(apply_ms[k]):.2f}", f"{statistics.median(locked_ms[k]):.2f}"]
            for k, v in ms.items()]
    print(f"\nCPU ms per Predict of {args.candidates} candidates and per delta of one "
          f"batch applied, in process, one torch thread, median of {args.rounds} rounds")
    print(format_table(["arm", "Predict ms", "by round", "delta ms", "locked ms"], rows))
    figures: dict[str, Any] = {
        "ms_per_predict": {k: statistics.median(v) for k, v in ms.items()},
        "ms_per_delta": {k: statistics.median(v) for k, v in apply_ms.items()},
        "ms_locked_per_delta": {k: statistics.median(v) for k, v in locked_ms.items()},
        "rounds": ms, "delta_rounds": apply_ms, "locked_rounds": locked_ms}
    if args.baseline:
        for name, of in (("predict_this_over_baseline", ms),
                         ("delta_this_over_baseline", apply_ms),
                         ("locked_this_over_baseline", locked_ms)):
            figures[name] = {
                k[len("this "):]: statistics.median(v) / statistics.median(of["baseline" + k[4:]])
                for k, v in of.items() if k.startswith("this ")}
            print(name, json.dumps(figures[name], indent=1))
    print(f"wrote {write_result('serving_cpu', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

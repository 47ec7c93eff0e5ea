"""Rows held versus quality on a churning stream: filter + expiry + pruning on and off.

The same streamrec trainer and the same synthetic stream (fixed seed) for
every arm; only the table settings differ:

- ``unbounded``: every id gets a row on first sight and keeps it forever;
- ``filter``:    rows only after ``--min-count`` sightings;
- ``expiry``:    rows unseen for ``--ttl-s`` of event time are evicted;
- ``filter+expiry``: both (the Monolith setting);
- ``filter+expiry+prune``: plus OptEmbed row pruning (``--prune-alpha``; rows are
  safe from it for ``--prune-grace-s`` after admission, 10 s here: with the
  config's default of 300 s, longer than this stream's TTL, expiry frees rows first).

Reported per arm: rows held at the end and at the peak (summed over the
embedding tables), progressive (test-then-train) AUC and logloss over the
whole stream and its last 20%, and events/s. Targets: filter+expiry holds
<= 50% of the unbounded arm's rows at <= 0.005 AUC loss.

    python -m benchmarks.tables_churn                 # ~5 min
    python -m benchmarks.tables_churn --quick         # ~1 min
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import torch

from benchmarks.report import format_table, write_result
from streamrec.ingest.batch import Batcher
from streamrec.config import load_config
from streamrec.synthetic import PRESETS, SyntheticStream
from streamrec.trainer.progressive import ProgressiveMetrics
from streamrec.trainer.trainer import OnlineTrainer

FEATURES = "user_id,item_id,category,country,hour"


def arms(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    filt = {"table_defaults.min_count": str(args.min_count)}
    ttl = {"table_defaults.ttl_s": str(args.ttl_s)}
    prune = {"table_defaults.prune_alpha": str(args.prune_alpha),
             "table_defaults.prune_grace_s": str(args.prune_grace_s)}
    return {
        "unbounded": {},
        "filter": filt,
        "expiry": ttl,
        "filter+expiry": {**filt, **ttl},
        "filter+expiry+prune": {**filt, **ttl, **prune},
    }


def run_arm(overrides: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(env={}, overrides={
        "model.sparse_features": FEATURES, "model.dense_features": "price",
        "trainer.batch_size": str(args.batch), **overrides})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    tail_start = int(args.events * 0.8)
    tail = ProgressiveMetrics(window=1)
    whole = ProgressiveMetrics()
    peak_rows, seen = 0, 0
    events = SyntheticStream(PRESETS[args.preset]()).events(args.events)
    started = time.perf_counter()
    while chunk := list(itertools.islice(events, args.batch)):
        step = trainer.train_batch(batcher.build(chunk))
        labels = torch.tensor([e.label or 0.0 for e in chunk])
        whole.update(step.probs, labels)
        if seen >= tail_start:
            tail.update(step.probs, labels)
        seen += len(chunk)
        rows = sum(len(trainer.tables[f]) for f in trainer.features)
        peak_rows = max(peak_rows, rows)
    wall = time.perf_counter() - started
    stats = {f: trainer.tables[f].stats for f in trainer.features}
    return {
        "rows_end": sum(len(trainer.tables[f]) for f in trainer.features),
        "rows_peak": peak_rows,
        "auc": whole.auc, "logloss": whole.logloss,
        "auc_last20": tail.auc, "logloss_last20": tail.logloss,
        "events_per_s": args.events / wall,
        "admitted": sum(s.admitted for s in stats.values()),
        "evicted": sum(s.evicted for s in stats.values()),
        "pruned": sum(s.pruned for s in stats.values()),
        "overrides": overrides,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="60k events instead of 300k")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--preset", default="dense_vs_sparse_users", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--ttl-s", type=float, default=60.0, help="event seconds (the stream "
                   "spans 200 events per event second)")
    p.add_argument("--prune-alpha", type=float, default=1e-6)
    p.add_argument("--prune-grace-s", type=float, default=10.0,
                   help="event seconds a new row is safe from pruning (under --ttl-s, or "
                        "expiry frees rows before pruning may)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--arms", default="", help="comma-separated subset")
    args = p.parse_args(argv)
    if args.quick:
        args.events = 60_000
    torch.set_num_threads(args.threads)
    chosen = arms(args)
    if args.arms:
        chosen = {k: v for k, v in chosen.items() if k in args.arms.split(",")}
    results = {}
    for name, overrides in chosen.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_arm(overrides, args)
    base = results.get("unbounded")
    rows = []
    for name, r in results.items():
        rows.append([name, r["rows_end"], r["rows_peak"],
                     r["rows_end"] / base["rows_end"] if base else float("nan"),
                     round(r["auc"], 4), round(r["auc_last20"], 4),
                     round(r["auc"] - base["auc"], 4) if base else float("nan"),
                     round(r["logloss"], 4), r["events_per_s"], r["pruned"]])
    print(format_table(["arm", "rows end", "rows peak", "rows/unbounded", "AUC", "AUC last 20%",
                        "dAUC", "logloss", "events/s", "pruned"], rows))
    write_result("tables_churn" + ("_quick" if args.quick else ""),
                 {"args": vars(args), "threads": args.threads, "arms": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

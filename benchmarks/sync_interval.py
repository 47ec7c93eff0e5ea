"""What freshness buys: AUC measured at the serving replica for several sync intervals.

The drifting synthetic stream (fixed seed) arrives as if in real time, 200
events per second of event time. Every event is first scored by the serving
replica — with whatever parameters it last received — and only then learned
by the trainer (mini-batches of ``--batch``); the trainer publishes a delta
to the replica whenever ``interval`` seconds of event time have passed since
the last one. The AUC of the served scores is what users of the replica
experienced. ``trainer`` is the trainer's own progressive AUC (parameters
as fresh as they can be); ``never`` syncs once, after the warm-up, and then
freezes.

    python -m benchmarks.sync_interval            # ~3 min
    python -m benchmarks.sync_interval --quick
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from benchmarks.report import format_table, write_result
from streamrec.ingest.batch import Batcher
from streamrec.serving.replica import ModelReplica
from streamrec.config import load_config
from streamrec.synthetic import PRESETS, SyntheticStream
from streamrec.trainer.progressive import ProgressiveMetrics
from streamrec.trainer.sync.publisher import Publisher
from streamrec.trainer.sync.sink import MemoryDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

EVENTS_PER_EVENT_SECOND = 200


def run_arm(interval_s: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """``interval_s``: None = never after warm-up; 0 = score with the trainer itself."""
    config = load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price", "trainer.batch_size": str(args.batch)})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    replica = ModelReplica(registry=CollectorRegistry())
    publisher = Publisher(TrainerParameters(trainer),
                          {"replica": MemoryDeltaSink(replica)}, interval_s=1.0,
                          registry=CollectorRegistry())
    served = ProgressiveMetrics(window=1)
    warm_up = int(args.events * args.warm_up)
    stream = SyntheticStream(PRESETS[args.preset]()).events(args.events)
    last_sync_ms, seen, syncs = None, 0, 0
    started = time.perf_counter()
    while chunk := list(itertools.islice(stream, args.batch)):
        labels = torch.tensor([e.label or 0.0 for e in chunk])
        now_ms = chunk[-1].timestamp_ms
        if interval_s == 0:
            probs = trainer.train_batch(batcher.build(chunk)).probs
        else:
            if replica.ready:
                rows = [(e.user_id, e.item_id, e.features) for e in chunk]
                probs = torch.tensor(replica.score_rows(rows)[0])
            else:
                probs = torch.full((len(chunk),), float("nan"))
            trainer.train_batch(batcher.build(chunk))
            due = last_sync_ms is None and seen + len(chunk) >= warm_up
            if interval_s is not None and last_sync_ms is not None:
                due = now_ms - last_sync_ms >= interval_s * 1000
            if due:
                publisher.publish_once()
                last_sync_ms, syncs = now_ms, syncs + 1
        if seen >= warm_up:
            served.update(probs, labels)
        seen += len(chunk)
    return {"auc": served.auc, "logloss": served.logloss, "syncs": syncs,
            "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="40k events instead of 150k")
    p.add_argument("--events", type=int, default=150_000)
    p.add_argument("--preset", default="drifting", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=64,
                   help="training batch (64 = 0.32 s of event time, finer than any interval)")
    p.add_argument("--intervals", default="0.5,1,5,30,120", help="seconds of event time")
    p.add_argument("--warm-up", type=float, default=0.1, help="share of the stream not scored")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.quick:
        args.events = 40_000
    torch.set_num_threads(args.threads)
    arms: dict[str, float | None] = {"trainer": 0.0}
    arms.update({f"{float(x):g} s": float(x) for x in args.intervals.split(",")})
    arms["never"] = None
    results = {}
    for name, interval in arms.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_arm(interval, args)
    best = results["trainer"]["auc"]
    print(f"{args.preset} stream, {args.events:,} events ({args.events / 200:,.0f} s of event "
          f"time), batch {args.batch}, torch threads {args.threads}")
    print(format_table(["sync interval", "served AUC", "vs trainer", "served logloss", "syncs"],
                       [[k, round(r["auc"], 4), round(r["auc"] - best, 4),
                         round(r["logloss"], 4), r["syncs"]] for k, r in results.items()]))
    write_result("sync_interval" + ("_quick" if args.quick else ""),
                 {"args": vars(args), "threads": args.threads, "arms": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

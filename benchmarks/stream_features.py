"""What reading the stream's features costs and buys in `streamrec evaluate`.

Every arm reads the same file of synthetic events (the ``default`` stream, fixed
seed: ``category``, ``country``, ``hour`` categorical, ``price`` a float), in
one process, the arms interleaved over ``--rounds`` rounds (best round kept):

- ``decode``              the file source's polls, nothing else;
- ``decode+audit``        the same polls through the feature audit (what every
                          `train` and `evaluate` poll now pays);
- ``evaluate-ids``        `evaluate` with ``model.sparse_features=user_id,item_id``;
- ``evaluate-configured`` `evaluate` with every feature listed in the config;
- ``evaluate-discovered`` `evaluate` with no list: the same features, found by
                          the prefix scan.

Reported: events/s and AUC / logloss per arm, and as ratios within the run what
the audit costs on decoding (also timed inside the arm: the share of its time
spent auditing, steadier on a shared machine) and what the scan costs on evaluate.

    python -m benchmarks.stream_features                  # 100k events, ~3 min
    python -m benchmarks.stream_features --events 30000 --rounds 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import format_table, write_result

ARMS = ("decode", "decode+audit", "evaluate-ids", "evaluate-configured", "evaluate-discovered")
SPARSE = "user_id,item_id,category,country,hour"


def run_arm(arm: str, path: str) -> dict[str, Any]:
    """One run of ``arm`` over ``path``: events, seconds and (evaluate) AUC / logloss."""
    from streamrec.ingest.feature_audit import AuditedSource, FeatureAudit
    from streamrec.ingest.file_source import FileSource

    if arm.startswith("decode"):
        source: Any = FileSource(path, "json")
        audit = FeatureAudit(SPARSE.split(","), ["price"])
        in_audit = [0.0]
        observe = audit.observe

        def timed(events: Any) -> None:  # the audit's own time, apart from the noise
            t0 = time.perf_counter()
            observe(events)
            in_audit[0] += time.perf_counter() - t0

        audit.observe = timed  # type: ignore[method-assign]
        if arm == "decode+audit":
            source = AuditedSource(source, audit)
        started = time.perf_counter()
        n = 0
        while not source.exhausted:
            n += len(source.poll(4096, 0.1).events)
        seconds = time.perf_counter() - started
        source.close()
        return {"events": n, "seconds": seconds, "audit_us_per_event": in_audit[0] / n * 1e6}

    from streamrec.config import load_config
    from streamrec.cli.evaluate import evaluate

    overrides = {"trainer.threads": "1"}
    if arm == "evaluate-ids":
        overrides["model.sparse_features"] = "user_id,item_id"
    elif arm == "evaluate-configured":
        overrides.update({"model.sparse_features": SPARSE, "model.dense_features": "price"})
    result = evaluate(load_config(env={}, overrides=overrides), path, progress=False)
    return {"events": result["events"], "seconds": result["wall_seconds"],
            "auc": result["auc"], "logloss": result["logloss"],
            "sparse": result["features"]["sparse"], "dense": result["features"]["dense"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    args = p.parse_args(argv)

    import torch

    from streamrec.runtime import tune_gc
    from streamrec.synthetic import PRESETS, write_jsonl

    torch.set_num_threads(1)
    # evaluate-ids ignores four features, with a warning each per run: known here.
    logging.getLogger("ingest.feature_audit").setLevel(logging.ERROR)
    tune_gc()  # as the streamrec commands do
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "events.jsonl")
        write_jsonl(path, args.events, PRESETS["default"]())
        for round_ in range(args.rounds):
            for arm in args.arms.split(","):
                print(f"round {round_ + 1}: {arm} ...", file=sys.stderr, flush=True)
                fig = run_arm(arm, path)
                fig["events_per_s"] = fig["events"] / fig["seconds"]
                if arm not in best or fig["events_per_s"] > best[arm]["events_per_s"]:
                    best[arm] = fig
    rows = [[arm, f["events"], round(f["seconds"], 2), f["events_per_s"],
             f.get("auc", ""), f.get("logloss", "")] for arm, f in best.items()]
    print(f"\n{args.events:,} JSONL events (default stream), torch threads 1, "
          f"best of {args.rounds}")
    print(format_table(["arm", "events", "seconds", "events/s", "auc", "logloss"], rows))
    speed = {arm: f["events_per_s"] for arm, f in best.items()}
    ratios = {}
    if {"decode", "decode+audit"} <= speed.keys():
        ratios["decode+audit / decode events/s (the audit's cost)"] = \
            speed["decode+audit"] / speed["decode"]
    if {"evaluate-discovered", "evaluate-configured"} <= speed.keys():
        ratios["evaluate-discovered / evaluate-configured events/s (the scan's cost)"] = \
            speed["evaluate-discovered"] / speed["evaluate-configured"]
    if "decode+audit" in best:
        audit_us = best["decode+audit"]["audit_us_per_event"]
        ratios["audit time / decode+audit time (timed inside the arm)"] = \
            audit_us * 1e-6 * best["decode+audit"]["events_per_s"]
    print(format_table(["ratio", "value"], [[k, round(v, 3)] for k, v in ratios.items()]))
    write_result("stream_features", {"args": vars(args), "threads": 1, "arms": best,
                                     "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end from a JSONL file: read + decode + join + batch + train, against its parts.

Every arm reads the same file of synthetic events (the ``drifting`` stream,
fixed seed), each in a fresh Python process (garbage-collector settings are
process-wide, and a process that imported torch differs from one that did
not):

- ``json``      ``json.loads`` of every line: the floor of any JSON decoder;
- ``decode``    the file source's polls (orjson + validation into events), no training,
                with the garbage-collector settings of ``loop``;
- ``loop-default-gc``  the training loop (``TrainingLoop`` over ``FileSource`` with the
                joiner), with Python's default garbage-collector settings;
- ``loop``      the same, after :func:`streamrec.runtime.tune_gc` (what the
                ``streamrec`` commands do at start).

Reported: events/s per arm and, as ratios within the run, what training costs
on top of decoding and what the GC settings buy.

    python -m benchmarks.ingest_loop               # 200k events, ~1 min
    python -m benchmarks.ingest_loop --events 50000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import format_table, write_result

ARMS = ("json", "decode", "loop-default-gc", "loop")
FEATURES = "user_id,item_id,category,country,hour"


def run_arm(arm: str, path: str, threads: int) -> dict[str, float]:
    """Run ``arm`` over ``path`` in this process; events and seconds."""
    if arm == "json":
        started = time.perf_counter()
        with open(path, "rb") as f:
            n = sum(1 for line in f if json.loads(line) is not None)
        return {"events": n, "seconds": time.perf_counter() - started}

    from streamrec.ingest.file_source import FileSource

    if arm == "decode":
        from streamrec.runtime import tune_gc

        tune_gc()  # as the loop arm: the ratio is then what batching + training add
        source = FileSource(path, "json")
        started = time.perf_counter()
        n = 0
        while not source.exhausted:
            n += len(source.poll(4096, 0.1).events)
        return {"events": n, "seconds": time.perf_counter() - started}

    import torch

    from streamrec.ingest.joiner import Joiner
    from streamrec.config import load_config
    from streamrec.runtime import tune_gc
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(threads)
    config = load_config(env={}, overrides={"model.sparse_features": FEATURES,
                                            "model.dense_features": "price"})
    trainer = OnlineTrainer.from_config(config)
    ing = config.ingest
    joiner = Joiner(ing.action_types, ing.join_window_s, ing.negative_sample_rate)
    loop = TrainingLoop(trainer, FileSource(path, "json"), config, joiner=joiner)
    if arm == "loop":
        tune_gc()
    started = time.perf_counter()
    stats = loop.run()
    return {"events": stats.events, "seconds": time.perf_counter() - started,
            "examples": stats.examples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--arm", help=argparse.SUPPRESS)  # run one arm here (child process)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.file, args.threads)))
        return 0

    from streamrec.synthetic import PRESETS, write_jsonl

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "events.jsonl")
        write_jsonl(path, args.events, PRESETS["drifting"]())
        for arm in args.arms.split(","):
            print(f"{arm} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ingest_loop", "--arm", arm, "--file", path,
                 "--threads", str(args.threads)],
                check=True, capture_output=True, text=True)
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            fig["events_per_s"] = fig["events"] / fig["seconds"]
            results[arm] = fig
    rows = [[arm, int(f["events"]), round(f["seconds"], 2), f["events_per_s"]]
            for arm, f in results.items()]
    print(f"\n{args.events:,} JSONL events (drifting stream), torch threads {args.threads}")
    print(format_table(["arm", "events", "seconds", "events/s"], rows))
    speed = {arm: f["events_per_s"] for arm, f in results.items()}
    ratios = {}
    if "loop" in speed and "decode" in speed:
        ratios["loop / decode events/s (what batching + training cost)"] = \
            speed["loop"] / speed["decode"]
    if "loop" in speed and "loop-default-gc" in speed:
        ratios["loop / loop-default-gc (tune_gc)"] = speed["loop"] / speed["loop-default-gc"]
    if "decode" in speed and "json" in speed:
        ratios["decode / json events/s (validation vs bare parsing)"] = \
            speed["decode"] / speed["json"]
    print(format_table(["ratio", "value"], [[k, round(v, 3)] for k, v in ratios.items()]))
    write_result("ingest_loop", {"args": vars(args), "threads": args.threads,
                                 "arms": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving latency: Predict over gRPC from a real ``streamrec serve`` process, with and without sync.

One model (the default config's, trained on the default synthetic stream) is pushed to a ``streamrec serve`` process over its sync port. Then,
for each candidate count, the same sequence of Predict requests (one user,
shared ``country``/``hour`` features, per-candidate ``category``/``price``)
is timed in three arms:

- ``in-process``  ``ModelReplica.predict_columns`` (what the server runs for either
                  form of per-candidate features) on the same snapshot in this
                  process: the scoring floor, no RPC;
- ``grpc``        ``RecommenderClient.predict`` against the serve process, requests
                  one after another from a client process of its own, per-candidate
                  features as ``candidate_features`` (one mapping per candidate);
- ``grpc-columns`` the same with them as ``candidate_columns`` (one list per feature);
- ``grpc+sync``   the same while this process pushes a delta (rows the trainer
                  touched, collected beforehand) every ``--sync-interval-s``: what
                  applying parameters costs the requests served meanwhile.

Reported: p50, p99 and mean latency per arm, and as ratios within the run what
the RPC path adds over scoring in-process and what sync does to the p99. The
serve process and the client run with one torch thread each (``OMP_NUM_THREADS=1``).

    python -m benchmarks.serving_latency            # ~1 min
    python -m benchmarks.serving_latency --quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.report import format_table, quantile, write_result

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests(candidates: int, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` Predict requests of ``candidates`` items each (deterministic)."""
    import random

    rng = random.Random(seed * 1_000_003 + candidates)
    out = []
    for _ in range(count):
        items = rng.sample(range(1, 5_000), candidates)
        out.append({"user_id": rng.randrange(1, 20_000), "item_ids": items,
                     "features": {"country": f"k{rng.randrange(8)}", "hour": rng.randrange(24)},
                     "candidate_features": [{"category": f"c{i % 40}", "price": float(i % 97)}
                                            for i in items]})
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": quantile(seconds, 0.5) * 1e3, "p99_ms": quantile(seconds, 0.99) * 1e3,
            "mean_ms": sum(seconds) / len(seconds) * 1e3, "requests": len(seconds)}


def run_client(args: argparse.Namespace) -> int:
    """Child: time ``--requests`` Predicts against ``--client``; latencies (s) as JSON."""
    from streamrec.client import RecommenderClient

    requests = _requests(args.candidates, args.requests + args.warmup, args.seed)
    if args.columns:  # (the application's data in that form already: not timed)
        for r in requests:
            own = r.pop("candidate_features")
            r["candidate_columns"] = {name: [c[name] for c in own] for name in own[0]}
    seconds = []
    with RecommenderClient(args.client, timeout_s=30) as client:
        for i, r in enumerate(requests):
            t0 = time.perf_counter()
            client.predict(**r)
            if i >= args.warmup:
                seconds.append(time.perf_counter() - t0)
    Path(args.client_out).write_text(json.dumps(seconds))
    return 0


def _client(address: str, candidates: int, args: argparse.Namespace, tmp: Path,
            env: dict[str, str], columns: bool = False) -> list[float]:
    out = tmp / f"client-{candidates}-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-m", "benchmarks.serving_latency", "--client", address,
                    "--candidates", str(candidates), "--requests", str(args.requests),
                    "--warmup", str(args.warmup), "--seed", str(args.seed),
                    "--client-out", str(out), *(["--columns"] if columns else [])],
                   check=True, cwd=ROOT, env=env)
    return json.loads(out.read_text())


def _wait_ready(address: str, deadline_s: float = 60.0) -> None:
    from streamrec.client import RecommenderClient

    with RecommenderClient(address, timeout_s=1.0) as client:
        t0 = time.monotonic()
        while True:
            try:
                if client.health("streamrec.serving.Recommender"):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() - t0 > deadline_s:
                raise SystemExit(f"serve process at {address} not ready after {deadline_s} s")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests and candidate counts")
    p.add_argument("--candidates", default="10,100,1000", help="candidate counts (comma list)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per arm")
    p.add_argument("--warmup", type=int, default=20, help="requests sent first, not timed")
    p.add_argument("--events", type=int, default=50_000, help="events the model learns first")
    p.add_argument("--sync-interval-s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--client-out", help=argparse.SUPPRESS)
    p.add_argument("--columns", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        args.candidates = int(args.candidates)
        return run_client(args)
    if args.quick:
        args.candidates, args.requests, args.events = "10,100", 60, 10_000

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from prometheus_client import CollectorRegistry

    from benchmarks.serving_model import DeltaChain, trained_snapshot
    from streamrec.serving.replica import ModelReplica
    from streamrec.trainer.sync.sink import GrpcDeltaSink

    # Deltas to push during the sync arm: what the trainer changes between syncs.
    snapshot, deltas = trained_snapshot(args.events, 40)
    mean_rows = sum(d.num_rows() for d in deltas) / len(deltas)

    port, sync_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "serve", "--set", f"serving.port={port}",
         "--set", f"serving.sync_port={sync_port}", "--set", f"serving.token={TOKEN}",
         "--set", "metrics.port=-1"], cwd=ROOT, env=env)
    address = f"127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        sink = GrpcDeltaSink(f"127.0.0.1:{sync_port}", TOKEN, timeout_s=30.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                sink.push(snapshot)
                break
            except Exception:  # noqa: BLE001 - the sync port is not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        _wait_ready(address)
        replica = ModelReplica(registry=CollectorRegistry())
        replica.apply(snapshot)
        chain = DeltaChain(sink, snapshot)
        with tempfile.TemporaryDirectory(prefix="serving_latency_") as tmp:
            for n in (int(c) for c in args.candidates.split(",")):
                print(f"{n} candidates ...", file=sys.stderr, flush=True)
                local = []
                for i, r in enumerate(_requests(n, args.requests + args.warmup, args.seed)):
                    own = r["candidate_features"]
                    columns = {k: [c[k] for c in own] for k in own[0]}
                    shared = {k: (v,) for k, v in r["features"].items()}
                    t0 = time.perf_counter()
                    replica.predict_columns(r["user_id"], r["item_ids"], shared, columns)
                    if i >= args.warmup:
                        local.append(time.perf_counter() - t0)
                remote = _client(address, n, args, Path(tmp), env)
                by_columns = _client(address, n, args, Path(tmp), env, columns=True)
                # The sync arm: deltas every interval while the client runs. The
                # server is put back on the snapshot first (a full push, above
                # every version pushed before: a replica never goes back), so
                # every delta applies on its base.
                chain.restart()
                stop = threading.Event()
                pushed = []

                def push_deltas() -> None:
                    for delta in deltas * 1000:
                        if stop.wait(args.sync_interval_s):
                            return
                        if delta.version == 2 and pushed:
                            chain.restart()  # start the chain again
                        t0 = time.perf_counter()
                        chain.push(delta)
                        pushed.append(time.perf_counter() - t0)

                pusher = threading.Thread(target=push_deltas, daemon=True)
                pusher.start()
                synced = _client(address, n, args, Path(tmp), env)
                stop.set()
                pusher.join()
                results[str(n)] = {"in_process": _stats(local), "grpc": _stats(remote),
                                   "grpc_columns": _stats(by_columns),
                                   "grpc_sync": _stats(synced), "deltas_pushed": len(pushed),
                                   "delta_push_ms": _stats(pushed)["p50_ms"] if pushed else None}
        sink.close()
    finally:
        server.terminate()
        server.wait(30)

    rows = []
    for n, r in results.items():
        rows.append([int(n), r["in_process"]["p50_ms"], r["grpc"]["p50_ms"], r["grpc"]["p99_ms"],
                     r["grpc_columns"]["p50_ms"], r["grpc_sync"]["p50_ms"],
                     r["grpc_sync"]["p99_ms"], r["deltas_pushed"],
                     r["grpc"]["p50_ms"] / r["in_process"]["p50_ms"],
                     r["grpc_columns"]["p50_ms"] / r["in_process"]["p50_ms"],
                     r["grpc_sync"]["p99_ms"] / r["grpc"]["p99_ms"]])
    print(f"\nPredict latency (ms), {args.requests} requests per arm after {args.warmup} "
          f"untimed; model learned {args.events:,} events; deltas of ~{mean_rows:,.0f} rows "
          f"every {args.sync_interval_s} s in the sync arm; one torch thread per process")
    print(format_table(["candidates", "in-process p50", "grpc p50", "grpc p99",
                        "columns p50", "grpc+sync p50", "grpc+sync p99", "deltas",
                        "grpc/in-process p50", "columns/in-process p50",
                        "sync/no-sync p99"], rows))
    path = write_result("serving_latency" + ("_quick" if args.quick else ""),
                        {"args": vars(args), "threads": 1, "mean_rows_per_delta": mean_rows,
                         "arms": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

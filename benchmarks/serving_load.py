"""Serving under open-loop load: goodput and latency of one replica as the offered rate grows.

One ``streamrec serve`` replica gets the default model (trained on the default
synthetic stream) and a delta every second while a load generator, a process
of its own, sends Predict requests (100 candidates, request and per-candidate
features) on a fixed schedule over ``--connections`` connections: open loop,
so a slow answer delays no later send, and latency runs from the scheduled
send time (no coordinated omission). Each request carries a deadline
(``--deadline-ms``).

Arms, side by side on the same requests and rates (every arm's replica runs
throughout, and the arms take turns at each rate, so a change in the shared
machine's load hits them alike):

- ``workers``       the default serving config: one worker process per CPU
                    behind the port, each admitting 2 requests scoring at
                    once and 16 waiting, the rest refused at once
                    (RESOURCE_EXHAUSTED);
- ``one-process``   ``serving.workers = 1``: the same admission, one process;
- ``unbounded``     one process without admission control (every call
                    admitted at once, as a replica without it behaves).

With ``--baseline DIR`` each arm also runs from another checkout (built with
``setup.py build_ext --inplace``), as ``baseline:<arm>``, taking its turns in
the same run (its wide rows sent whole, as older replicas take them). With
``--without-wide`` each arm also serves a model trained without wide terms
(``model.wide_terms = ""``), as ``<arm>-no-wide``: what the wide terms cost a
replica.

Reported per arm and offered rate: goodput (answers within the deadline per
second), refusals (RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED sent by the
replica before the deadline), timeouts (the client waited out its deadline),
late answers (OK, but past the deadline from the scheduled send), p50 / p99
latency of the answers, and the CPU the server (its worker processes
included) and the load generator took (cores), since the generator shares the
machine's cores with the replica. Per arm: capacity (the best goodput) and the
sustained rate (the highest offered rate answered in full with p99 within
``--p99-ms``).

    python -m benchmarks.serving_load            # ~4 min
    python -m benchmarks.serving_load --arms workers --baseline /tmp/main-checkout
    python -m benchmarks.serving_load --arms workers --without-wide
    python -m benchmarks.serving_load --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.report import format_table, quantile, write_result
from benchmarks.serving_latency import ROOT, TOKEN, _free_port, _requests, _wait_ready

ARMS = {
    "workers": [],
    "one-process": ["--set", "serving.workers=1"],
    "unbounded": ["--set", "serving.workers=1", "--set", "serving.max_concurrent=1000",
                  "--set", "serving.max_queue=0", "--set", "serving.max_workers=1001"],
}
BASELINE = "baseline:"
NO_WIDE = "-no-wide"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants (Linux /proc).

    A child that exited counts only once reaped (in the parent's cutime/cstime).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += _cpu_seconds(int(child))
            except FileNotFoundError:  # exited meanwhile
                pass
    return total


def run_generator(args: argparse.Namespace) -> int:
    """Child: send ``--rate`` Predicts/s for ``--seconds`` on a fixed schedule; results as JSON."""
    import grpc

    from streamrec.client import to_feature_column, to_feature_values
    from streamrec.protos import serving_pb2, serving_pb2_grpc

    def message(r: dict[str, Any]) -> Any:
        own = r["candidate_features"]
        return serving_pb2.PredictRequest(
            user_id=r["user_id"], item_ids=r["item_ids"],
            features={k: to_feature_values(v) for k, v in r["features"].items()},
            candidate_columns={k: to_feature_column([c[k] for c in own]) for k in own[0]})

    count = int(args.rate * args.seconds)
    # Built before the clock starts: the application has its request ready.
    messages = [message(r) for r in _requests(args.candidates, min(count, 2000), args.seed)]
    # Separate connections (no shared subchannel): a replica's worker
    # processes share its port, and the kernel gives each connection to one.
    channels = [grpc.insecure_channel(args.generate,
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(args.connections)]
    stubs = [serving_pb2_grpc.RecommenderStub(c) for c in channels]
    done: list[tuple[float, float, float, str]] = []
    lock = threading.Lock()
    finished = threading.Event()
    deadline_s = args.deadline_ms / 1e3

    def record(scheduled: float, sent: float) -> Any:
        def on_done(future: Any) -> None:
            t = time.perf_counter()
            code = future.code().name if future.code() is not None else "OK"
            with lock:
                done.append((scheduled, sent, t, code))
                if len(done) == count:
                    finished.set()
        return on_done

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.2
    for i in range(count):
        scheduled = start + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        future = stubs[i % len(stubs)].Predict.future(messages[i % len(messages)],
                                                      timeout=deadline_s)
        future.add_done_callback(record(scheduled, sent))
    finished.wait(deadline_s + 30)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - start
    for channel in channels:
        channel.close()
    Path(args.out).write_text(json.dumps({
        "done": done, "wall_s": wall,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}))
    return 0


def _summary(raw: dict[str, Any], rate: float, seconds: float, deadline_ms: float
             ) -> dict[str, Any]:
    """One arm at one rate: goodput, refusals, timeouts (the client waited out its
    deadline), late answers and latency quantiles from the scheduled send times."""
    done = raw["done"]
    deadline = deadline_ms / 1e3
    ok = [t - s for s, _, t, code in done if code == "OK"]
    by_code: dict[str, int] = {}
    for _, _, _, code in done:
        by_code[code] = by_code.get(code, 0) + 1
    # A DEADLINE_EXCEEDED the replica sent before the deadline is a refusal;
    # one the client's own timer raised (a deadline after the send) a timeout.
    timed_out = sum(1 for _, sent, t, code in done
                    if code == "DEADLINE_EXCEEDED" and t - sent >= 0.95 * deadline)
    return {
        "offered_per_s": rate,
        "goodput_per_s": len([x for x in ok if x <= deadline]) / seconds,
        "refused_per_s": (by_code.get("RESOURCE_EXHAUSTED", 0)
                          + by_code.get("DEADLINE_EXCEEDED", 0) - timed_out) / seconds,
        "timed_out_per_s": timed_out / seconds,
        "late_per_s": len([x for x in ok if x > deadline]) / seconds,
        "codes": by_code,
        "p50_ms": quantile(ok, 0.5) * 1e3 if ok else None,
        "p99_ms": quantile(ok, 0.99) * 1e3 if ok else None,
        "generator_cores": raw["cpu_s"] / raw["wall_s"],
    }


def _sustained(rows: list[dict[str, Any]], p99_ms: float) -> float:
    """The highest offered rate answered in full (99%) within ``p99_ms`` at the p99; 0 if none."""
    return max([r["offered_per_s"] for r in rows if r["goodput_per_s"] >= 0.99 * r["offered_per_s"]
                and r["p99_ms"] is not None and r["p99_ms"] <= p99_ms], default=0.0)


def _whole_wide(delta: Any) -> Any:
    """``delta`` with its wide rows ``[weight, 0]``: as replicas of a release that
    took each row with its Adagrad sum (which they never read) want them."""
    import torch

    from streamrec.model.records import TableDelta, UpsertedRows

    def whole(t: TableDelta) -> TableDelta:
        if not t.table.endswith("#wide") or t.dim != 1:
            return t
        values = torch.cat([t.upserted.values, torch.zeros_like(t.upserted.values)], dim=1)
        return TableDelta(t.table, 2, UpsertedRows(t.upserted.ids, values), t.evicted)

    return replace(delta, tables=[whole(t) for t in delta.tables])


def _start_replica(arm: str, snapshot: Any, env: dict[str, str], baseline: str | None
                   ) -> tuple[subprocess.Popen[bytes], str, Any]:
    """A ``streamrec serve`` process for ``arm``, holding ``snapshot``; its address and sink.

    An arm named ``baseline:<arm>`` runs ``<arm>`` from the checkout ``baseline``.
    """
    from streamrec.trainer.sync.sink import GrpcDeltaSink

    root = ROOT
    if arm.startswith(BASELINE):
        arm, root = arm[len(BASELINE):], Path(str(baseline))
        env = {**env, "PYTHONPATH": str(root)}
    arm = arm.removesuffix(NO_WIDE)
    port, sync_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "serve", "--set", f"serving.port={port}",
         "--set", f"serving.sync_port={sync_port}", "--set", f"serving.token={TOKEN}",
         "--set", "metrics.port=-1", *ARMS[arm]], cwd=root, env=env)
    sink = GrpcDeltaSink(f"127.0.0.1:{sync_port}", TOKEN, timeout_s=30.0)
    deadline = time.monotonic() + 180  # worker processes import torch first
    while True:
        try:
            sink.push(snapshot)
            break
        except Exception:  # noqa: BLE001 - the sync port is not up yet
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            time.sleep(0.2)
    address = f"127.0.0.1:{port}"
    _wait_ready(address)
    return server, address, sink


def _load(arm: str, rate: float, pid: int, address: str, sink: Any, args: argparse.Namespace,
          env: dict[str, str], tmp: Path, snapshot: Any, deltas: list[Any], offset: int
          ) -> dict[str, Any]:
    """Offer ``rate`` Predicts/s to ``address`` while a delta is pushed every second.

    The delta chain starts again from ``snapshot``, above every version pushed
    before (a replica never goes back): delta versions are moved by ``offset``.
    """
    sink.push(snapshot)
    stop = threading.Event()
    failed: list[BaseException] = []

    def push_deltas() -> None:
        try:
            for delta in deltas:
                if stop.wait(1.0):
                    return
                sink.push(replace(delta, version=offset + delta.version,
                                  base_version=offset + delta.base_version))
        except BaseException as e:  # noqa: BLE001 - reported after the rate
            failed.append(e)

    pusher = threading.Thread(target=push_deltas, daemon=True)
    out = tmp / f"{arm}-{rate}.json"
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    pusher.start()
    subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_load", "--generate", address,
         "--rate", str(rate), "--seconds", str(args.seconds), "--candidates",
         str(args.candidates), "--deadline-ms", str(args.deadline_ms), "--seed", str(args.seed),
         "--connections", str(args.connections), "--out", str(out)],
        check=True, cwd=ROOT, env=env)
    stop.set()
    pusher.join()
    if failed:
        raise SystemExit(f"{arm} {rate:.0f}/s: a delta push failed: {failed[0]}")
    row = _summary(json.loads(out.read_text()), rate, args.seconds, args.deadline_ms)
    row["server_cores"] = (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rates, shorter runs")
    p.add_argument("--rates", default="200,300,400,500,600,800,1000",
                   help="offered requests/s (comma list)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--deadline-ms", type=float, default=200.0)
    p.add_argument("--p99-ms", type=float, default=20.0,
                   help="the p99 a sustained rate keeps (all requests answered)")
    p.add_argument("--events", type=int, default=50_000, help="events the model learns first")
    p.add_argument("--arms", default="workers,one-process",
                   help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--without-wide", action="store_true",
                   help="each arm also serves a model without wide terms, as <arm>-no-wide")
    p.add_argument("--baseline", metavar="DIR",
                   help="a checkout to compare against (built: setup.py build_ext --inplace): "
                        "each arm also runs from it, as baseline:<arm>")
    p.add_argument("--connections", type=int, default=8,
                   help="connections the load generator spreads its requests over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generate", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generate:
        return run_generator(args)
    if args.quick:
        args.rates, args.seconds, args.events = "200,500", 4.0, 10_000

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from benchmarks.serving_model import trained_snapshot

    models = {"": trained_snapshot(args.events, 60)}
    if args.without_wide:
        models[NO_WIDE] = trained_snapshot(args.events, 60, {"model.wide_terms": ""})

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rates = [float(r) for r in args.rates.split(",")]
    arms = args.arms.split(",")
    if args.baseline:
        arms += [BASELINE + arm for arm in arms]
    if args.without_wide:
        arms += [arm + NO_WIDE for arm in arms]
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    servers: dict[str, tuple[subprocess.Popen[bytes], str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="serving_load_") as tmp:
        try:
            # Every arm's replica runs (idle) through the whole run, and the
            # arms take turns at each rate: a change in the shared machine's
            # load meanwhile hits both arms alike.
            def model(arm: str) -> tuple[Any, list[Any]]:
                snapshot, deltas = models[NO_WIDE if arm.endswith(NO_WIDE) else ""]
                if arm.startswith(BASELINE):  # an older replica may want whole wide rows
                    return _whole_wide(snapshot), [_whole_wide(d) for d in deltas]
                return snapshot, deltas

            for arm in arms:
                servers[arm] = _start_replica(arm, model(arm)[0], env, args.baseline)
            for i, rate in enumerate(rates):
                for arm in arms:
                    snapshot, deltas = model(arm)
                    server, address, sink = servers[arm]
                    row = _load(arm, rate, server.pid, address, sink, args, env, Path(tmp),
                                replace(snapshot, version=1000 * (i + 1) + 1), deltas,
                                1000 * (i + 1))
                    results[arm].append(row)
                    print(f"{arm} {rate:.0f}/s: goodput {row['goodput_per_s']:.0f}/s, "
                          f"p99 {row['p99_ms']} ms, codes {row['codes']}", file=sys.stderr,
                          flush=True)
        finally:
            for server, _, sink in servers.values():
                sink.close()
                server.terminate()
                server.wait(30)

    table = []
    for arm, rows in results.items():
        for r in rows:
            table.append([arm, r["offered_per_s"], r["goodput_per_s"], r["refused_per_s"],
                          r["timed_out_per_s"], r["late_per_s"], r["p50_ms"], r["p99_ms"],
                          r["server_cores"], r["generator_cores"]])
    capacity = {arm: max(r["goodput_per_s"] for r in rows) for arm, rows in results.items()}
    sustained = {arm: _sustained(rows, args.p99_ms) for arm, rows in results.items()}
    print(f"\nOpen-loop Predict load, {args.candidates} candidates, deadline "
          f"{args.deadline_ms:.0f} ms, a delta every second, {args.seconds:.0f} s per rate; "
          f"one torch thread per server process, {args.connections} connections")
    print(format_table(["arm", "offered/s", "goodput/s", "refused/s", "timed out/s", "late/s",
                        "p50 ms", "p99 ms", "server cores", "generator cores"], table))
    for arm, rows in results.items():
        top = rows[-1]
        print(f"{arm}: capacity (best goodput) {capacity[arm]:.0f}/s; sustained (all answered, "
              f"p99 <= {args.p99_ms:.0f} ms) {sustained[arm]:.0f}/s; at the highest rate "
              f"({top['offered_per_s']:.0f}/s) goodput is "
              f"{top['goodput_per_s'] / capacity[arm]:.2f}x capacity, "
              f"{top['timed_out_per_s'] + top['late_per_s']:.1f}/s past the deadline")
    path = write_result("serving_load" + ("_quick" if args.quick else ""),
                        {"args": vars(args), "threads": 1, "capacity_per_s": capacity,
                         "sustained_per_s": sustained, "arms": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

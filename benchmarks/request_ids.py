"""What string ids cost a Predict: integer item_ids against string item_keys.

For each candidate count, over gRPC to an in-process replica (one torch
thread, a fresh model's snapshot), the same requests are timed in
alternation in three arms:

- ``ids``        ``item_ids`` (integers), the baseline;
- ``keys``       ``item_keys`` (strings the server hashes), the strings seen
                 before (the hash memo warm, the steady state for a catalogue);
- ``keys-cold``  ``item_keys`` never sent before (every string hashed).

Also timed alone: ``serving.ids.request_ids``, the id resolution, per arm.
Reported: p50 per arm and its ratio to ``ids``.

    python -m benchmarks.request_ids            # ~1 min
    python -m benchmarks.request_ids --quick
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from benchmarks.report import format_table, quantile, write_result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (default: off)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from prometheus_client import CollectorRegistry

    from streamrec.protos import serving_pb2
    from streamrec.client import RecommenderClient
    from streamrec.serving.ids import request_ids
    from streamrec.serving.replica import ModelReplica
    from streamrec.serving.server import create_server
    from streamrec.config import ServingConfig, load_config
    from streamrec.trainer.sync.sink import GrpcDeltaSink
    from streamrec.trainer.parameters import TrainerParameters
    from streamrec.trainer.trainer import OnlineTrainer

    requests = 40 if args.quick else 200
    trainer = OnlineTrainer.from_config(load_config(env={}))
    registry = CollectorRegistry()
    servers = create_server(ServingConfig(port=0, sync_port=0, token="bench"),
                            ModelReplica(registry=registry), registry=registry)
    servers.start()
    sink = GrpcDeltaSink(f"127.0.0.1:{servers.sync_port}", "bench", 1 << 20, 30.0)
    sink.push(TrainerParameters(trainer).snapshot(1))
    client = RecommenderClient(f"127.0.0.1:{servers.port}", timeout_s=30.0)
    fresh = itertools.count()
    rows: list[dict[str, Any]] = []
    try:
        for candidates in (10, 100, 1000):
            ids = list(range(1, candidates + 1))
            keys = [f"sku-{i}" for i in ids]
            arms = {"ids": lambda: ids, "keys": lambda: keys,
                    "keys-cold": lambda: [f"new-{next(fresh)}" for _ in ids]}
            rpc: dict[str, list[float]] = {name: [] for name in arms}
            resolve: dict[str, list[float]] = {name: [] for name in arms}
            for name, items in arms.items():  # warm up every path (and the memo)
                client.predict(user_id="alice", item_ids=items())
            for _ in range(requests):
                for name, items in arms.items():  # alternated: the same noise for each
                    sent = items()
                    t0 = time.perf_counter()
                    client.predict(user_id="alice", item_ids=sent)
                    rpc[name].append(time.perf_counter() - t0)
                    field = "item_keys" if name != "ids" else "item_ids"
                    request = serving_pb2.PredictRequest(user_key="alice", **{field: (
                        sent if name != "keys-cold" else arms["keys-cold"]())})
                    t0 = time.perf_counter()
                    request_ids(request, 10_000)
                    resolve[name].append(time.perf_counter() - t0)
            base = quantile(rpc["ids"], 0.5)
            for name in arms:
                p50 = quantile(rpc[name], 0.5)
                rows.append({"candidates": candidates, "arm": name,
                             "predict_p50_ms": round(p50 * 1e3, 3),
                             "vs_ids": round(p50 / base, 3),
                             "resolve_p50_ms": round(quantile(resolve[name], 0.5) * 1e3, 4)})
    finally:
        client.close()
        sink.close()
        servers.stop(0)
    columns = list(rows[0])
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    path = write_result("request_ids_quick" if args.quick else "request_ids",
                        {"requests_per_arm": requests, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

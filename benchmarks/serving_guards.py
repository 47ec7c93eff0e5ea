"""What the undecodable-request guard costs a well-formed Predict.

Two public servers in this process score with one replica (the default
config's model, trained briefly on the default synthetic stream):

- ``plain``    the Recommender service registered on a bare ``grpc.server``;
- ``guarded``  ``serving.server.create_server``'s, whose interceptor
               (``serving.undecodable``) turns undecodable requests into
               INVALID_ARGUMENT.

The same sequence of Predict requests (10 candidates) goes to each in
alternating rounds, one request at a time, so machine noise falls on both
alike. Reported: p50 and mean latency per arm and guarded / plain.

    python -m benchmarks.serving_guards            # ~30 s
    python -m benchmarks.serving_guards --quick
"""

from __future__ import annotations

import argparse
import time
from concurrent import futures

import grpc
import torch
from prometheus_client import CollectorRegistry

from benchmarks.report import format_table, quantile, write_result
from streamrec.ingest.batch import Batcher
from streamrec.protos import serving_pb2, serving_pb2_grpc
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import _Recommender, create_server
from streamrec.config import ServingConfig, load_config
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters


def _replica() -> ModelReplica:
    config = load_config(env={}, overrides={"trainer.threads": "1"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    events = list(SyntheticStream(default()).events(20_000))
    for start in range(0, len(events), 1024):
        trainer.train_batch(batcher.build(events[start:start + 1024]))
    replica = ModelReplica(CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    return replica


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round = 6, 100
    torch.set_num_threads(1)
    replica = _replica()
    config = ServingConfig(port=0, sync_port=0)
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    serving_pb2_grpc.add_RecommenderServicer_to_server(_Recommender(replica, config), plain)
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    guarded = create_server(config, replica)
    guarded.start()
    request = serving_pb2.PredictRequest(user_id=42, item_ids=list(range(1, 11)))
    request.features["country"].strings.append("fr")
    channels = {"plain": grpc.insecure_channel(f"127.0.0.1:{plain_port}"),
                "guarded": grpc.insecure_channel(f"127.0.0.1:{guarded.port}")}
    stubs = {name: serving_pb2_grpc.RecommenderStub(ch) for name, ch in channels.items()}
    times: dict[str, list[float]] = {name: [] for name in stubs}
    try:
        for stub in stubs.values():  # warm both paths
            for _ in range(50):
                stub.Predict(request)
        for r in range(args.rounds):
            order = list(stubs) if r % 2 == 0 else list(reversed(stubs))
            for name in order:
                stub = stubs[name]
                for _ in range(args.per_round):
                    t0 = time.perf_counter()
                    stub.Predict(request)
                    times[name].append(time.perf_counter() - t0)
    finally:
        for channel in channels.values():
            channel.close()
        plain.stop(None).wait()
        guarded.stop(0)
    figures = {name: {"p50_ms": 1000 * quantile(t, 0.5), "p99_ms": 1000 * quantile(t, 0.99),
                      "mean_ms": 1000 * sum(t) / len(t), "requests": len(t)}
               for name, t in times.items()}
    ratios = {k: figures["guarded"][k] / figures["plain"][k] for k in ("p50_ms", "mean_ms")}
    print(format_table(["arm", "p50 ms", "p99 ms", "mean ms", "requests"],
                       [[n, f["p50_ms"], f["p99_ms"], f["mean_ms"], f["requests"]]
                        for n, f in figures.items()]))
    print(f"guarded / plain: p50 {ratios['p50_ms']:.3f}x, mean {ratios['mean_ms']:.3f}x")
    path = write_result("serving_guards_quick" if args.quick else "serving_guards",
                        {"arms": figures, "guarded_over_plain": ratios, "candidates": 10})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

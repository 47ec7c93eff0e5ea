"""The serving tier on real gRPC ports: Predict/Recommend, validation, auth, sync, health."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch
from prometheus_client import CollectorRegistry

from ingest.batch import Batcher
from serving.client import RecommenderClient
from serving.replica import ModelReplica
from serving.server import Servers, create_server
from streamrec.config import ServingConfig, load_config
from streamrec.errors import SyncError
from streamrec.synthetic import SyntheticStream, default
from tests.integration.processes import free_port, start_cli, stop, wait_until
from trainer.sync.delta import ParameterDelta, TableDelta
from trainer.sync.sink import GrpcDeltaSink
from trainer.trainer import OnlineTrainer

pytestmark = pytest.mark.integration
TOKEN = "s3cret"


@pytest.fixture
def served() -> Iterator[tuple[Servers, ModelReplica, RecommenderClient, CollectorRegistry]]:
    registry = CollectorRegistry()
    replica = ModelReplica(registry=registry)
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN, max_candidates=100),
                            replica, registry=registry)
    servers.start()
    client = RecommenderClient(f"127.0.0.1:{servers.port}")
    yield servers, replica, client, registry
    client.close()
    servers.stop(0)


@pytest.fixture(scope="module")
def trainer() -> OnlineTrainer:
    torch.set_num_threads(1)
    # No history features: the atomicity test below sets embedding rows only.
    cfg = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id,category",
                                         "model.history_features": "",
                                         "trainer.batch_size": "128"})
    t = OnlineTrainer(cfg)
    batcher = Batcher(cfg.model.sparse_features, cfg.model.dense_features)
    events = list(SyntheticStream(default()).events(1280))
    for start in range(0, len(events), 128):
        t.train_batch(batcher.build(events[start:start + 128]))
    return t


def sink(servers: Servers, token: str = TOKEN) -> GrpcDeltaSink:
    return GrpcDeltaSink(f"127.0.0.1:{servers.sync_port}", token, 65536, 5.0)


def test_predict_refuses_until_parameters_arrive_then_matches_the_trainer(served, trainer) -> None:
    servers, replica, client, _ = served
    assert client.health()
    assert not client.health("streamrec.serving.Recommender")  # not ready yet
    with pytest.raises(grpc.RpcError) as info:
        client.predict(user_id=1, item_ids=[1, 2])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    s = sink(servers)
    assert s.push(trainer.snapshot(1)) == 1
    assert s.version() == 1
    assert client.health("streamrec.serving.Recommender")
    items = list(range(1, 30))
    got = client.predict(user_id=7, item_ids=items, features={"category": "c3"})
    batcher = Batcher(trainer.config.model.sparse_features, [])
    want = trainer.predict(batcher.build_rows([(7, i, {"category": ("c3",)}) for i in items]))
    assert got.model_version == 1
    torch.testing.assert_close(torch.tensor(got.scores), want, atol=1e-6, rtol=1e-5)
    top = client.recommend(user_id=7, item_ids=items, k=5, features={"category": "c3"})
    assert [i for i, _ in top.items] == [items[j] for j in torch.argsort(want, descending=True,
                                                                         stable=True)[:5]]
    s.close()


def test_bad_requests_get_invalid_argument_with_a_reason(served, trainer) -> None:
    servers, _, client, registry = served
    sink(servers).push(trainer.snapshot(1))
    cases = [
        (dict(user_id=1, item_ids=[]), "item_ids is empty"),
        (dict(user_id=1, item_ids=list(range(101))), "over the limit of 100"),
        (dict(user_id=1, item_ids=[1, 2], candidate_features=[{"category": "a"}]),
         "1 candidate_features for 2 item_ids"),
        (dict(user_id=1, item_ids=[1], features={"price": float("nan")}), "must be finite"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(**kwargs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in info.value.details()
    # The server is unharmed, and the rejections were counted.
    assert client.predict(user_id=1, item_ids=[1]).model_version == 1
    assert registry.get_sample_value("streamrec_serving_requests_total",
                                     {"method": "Predict", "code": "INVALID_ARGUMENT"}) == 4


def test_sync_port_requires_the_token_and_applies_nothing_without_it(served, trainer) -> None:
    servers, replica, _, _ = served
    for token in ("", "wrong"):
        with pytest.raises(SyncError, match="UNAUTHENTICATED"):
            sink(servers, token).push(trainer.snapshot(1))
    assert replica.version == 0


def test_a_delta_on_the_wrong_base_is_refused_with_failed_precondition(served, trainer) -> None:
    servers, replica, _, _ = served
    s = sink(servers)
    s.push(trainer.snapshot(4))
    with pytest.raises(SyncError) as info:
        s.push(replace(trainer.snapshot(9), full=False, base_version=7))
    assert type(info.value).__name__ == "VersionGapError"
    assert replica.version == 4


def test_concurrent_predicts_never_see_a_half_applied_delta(served, trainer) -> None:
    servers, replica, client, _ = served
    s = sink(servers)
    s.push(trainer.snapshot(1))
    dim = trainer.model.row_dim
    items = torch.arange(1, 2001)
    dense = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def delta(version: int) -> ParameterDelta:
        # Every item row and the bias move together; a request that saw a
        # mix of two versions would score its candidates differently.
        rows = torch.full((items.numel(), dim), 0.01 * version)
        dense["bias"] = torch.tensor([0.1 * version])
        return ParameterDelta(version, version - 1, False,
                              [TableDelta("item_id", dim, items, rows)], dict(dense), 0, 0, "")

    expected: dict[int, float] = {}
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            r = client.predict(user_id=-1, item_ids=items[:100].tolist())
            if r.model_version < 2:  # the trainer's snapshot: rows really differ
                continue
            if max(r.scores) - min(r.scores) > 1e-6:
                errors.append(f"mixed scores at version {r.model_version}")
            expected.setdefault(r.model_version, r.scores[0])
            if abs(expected[r.model_version] - r.scores[0]) > 1e-6:
                errors.append(f"version {r.model_version} scored two ways")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for version in range(2, 40):
        s.push(delta(version))
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(expected) > 3  # the readers really did overlap with several versions


def test_serve_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port, sync_port, metrics = free_port(), free_port(), free_port()
    cfg = tmp_path / "serving.toml"
    cfg.write_text(f"[serving]\nport = {port}\nsync_port = {sync_port}\ntoken = \"{TOKEN}\"\n"
                   f"grace_s = 1.0\n[metrics]\nport = {metrics}\n")
    proc = start_cli(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    client = RecommenderClient(f"127.0.0.1:{port}", timeout_s=2)
    try:
        wait_until("the serve process to answer health checks", client.health, timeout_s=60)
    finally:
        client.close()
        code = stop(proc)
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]

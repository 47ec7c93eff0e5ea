"""The serving tier on real gRPC ports: Predict/Recommend, validation, auth, sync, health."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batcher
from streamrec.protos import event_pb2, serving_pb2, serving_pb2_grpc
from streamrec.client import RecommenderClient
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import RECOMMENDER, Servers, create_server
from streamrec.config import ServingConfig, load_config
from streamrec.errors import SyncError
from streamrec.synthetic import SyntheticStream, default
from tests.integration.processes import free_port, start_cli, stop, wait_until
from streamrec.model.delta import DenseParameters, ParameterDelta, TableDelta, UpsertedRows
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration
TOKEN = "s3cret"


@pytest.fixture
def served() -> Iterator[tuple[Servers, ModelReplica, RecommenderClient, CollectorRegistry]]:
    registry = CollectorRegistry()
    replica = ModelReplica(registry=registry)
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN, max_candidates=100,
                                          max_request_ids=1000),
                            replica, registry=registry)
    servers.start()
    client = RecommenderClient(f"127.0.0.1:{servers.port}")
    yield servers, replica, client, registry
    client.close()
    servers.stop(0)


@pytest.fixture(scope="module")
def trainer() -> OnlineTrainer:
    torch.set_num_threads(1)
    # No history features nor wide terms: the atomicity test below sets
    # embedding rows only.
    cfg = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id,category",
                                         "model.history_features": "",
                                         "model.wide_terms": "",
                                         "trainer.batch_size": "128"})
    t = OnlineTrainer.from_config(cfg)
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
    assert s.push(TrainerParameters(trainer).snapshot(1)) == 1
    assert s.version() == 1
    assert client.health("streamrec.serving.Recommender")
    items = list(range(1, 30))
    got = client.predict(user_id=7, item_ids=items, features={"category": "c3"})
    batcher = Batcher(trainer.features, [])
    want = trainer.predict(batcher.build_rows([(7, i, {"category": ("c3",)}) for i in items]))
    assert got.model_version == 1
    torch.testing.assert_close(torch.tensor(got.scores), want, atol=1e-6, rtol=1e-5)
    top = client.recommend(user_id=7, item_ids=items, k=5, features={"category": "c3"})
    assert [i for i, _ in top.items] == [items[j] for j in torch.argsort(want, descending=True,
                                                                         stable=True)[:5]]
    s.close()


def test_bad_requests_get_invalid_argument_with_a_reason(served, trainer) -> None:
    servers, _, client, registry = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    cases = [
        (dict(user_id=1, item_ids=[]), "item_ids is empty"),
        (dict(user_id=1, item_ids=list(range(101))), "over the limit of 100"),
        (dict(user_id=1, item_ids=[1, 2], candidate_features=[{"category": "a"}]),
         "1 candidate_features for 2 item_ids"),
        (dict(user_id=1, item_ids=[1], features={"price": float("nan")}), "must be finite"),
        # Shared features are copied into each of the 10 rows: 10 x 101 ids.
        (dict(user_id=1, item_ids=list(range(10)), features={"category": list(range(101))}),
         "make 1,010 feature ids, over the limit of 1,000 (serving.max_request_ids)"),
        # A candidate's own features replace the shared ones of the same name:
        # 2 candidates x 2 shared values, + 500 - 1 (category replaced) + 500.
        (dict(user_id=1, item_ids=[1, 2], features={"category": "c1", "price": 1.0},
              candidate_features=[{"category": list(range(500))}, {"tags": list(range(500))}]),
         "make 1,003 feature ids"),
        # Names with no values are copied into every row too: each counts as one.
        (dict(user_id=1, item_ids=list(range(10)), features={f"x{i}": [] for i in range(101)}),
         "make 1,010 feature ids"),
        # Candidate columns: one value per candidate each, replacing the shared
        # value of that name: 10 x (100 shared - 1 replaced + 2 columns).
        (dict(user_id=1, item_ids=list(range(10)), features={f"x{i}": [] for i in range(100)},
              candidate_columns={"x0": [f"v{i}" for i in range(10)], "y": list(range(10))}),
         "make 1,010 feature ids"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(**kwargs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in info.value.details()
    # Exactly at the limit is allowed.
    assert client.predict(user_id=1, item_ids=list(range(10)),
                          features={"category": list(range(100))}).model_version == 1
    # The server is unharmed, and the rejections were counted.
    assert client.predict(user_id=1, item_ids=[1]).model_version == 1
    assert registry.get_sample_value("streamrec_serving_requests_total",
                                     {"method": "Predict", "code": "INVALID_ARGUMENT"}) == len(cases)


def test_recommend_ranks_each_item_once_and_predict_scores_every_position(served,
                                                                          trainer) -> None:
    servers, _, client, _ = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    top = client.recommend(user_id=1, item_ids=[3, 3, 3, 5], k=3)
    assert sorted(i for i, _ in top.items) == [3, 5]
    # Each duplicate is ranked with the features of its first occurrence.
    own = [{"category": "c1"}, {"category": "c2"}, {"category": "c3"}, {"category": "c1"}]
    scores = client.predict(user_id=1, item_ids=[3, 5, 3, 5], candidate_features=own).scores
    assert len(scores) == 4
    assert scores[0] != scores[2]  # (so that "first occurrence" is what is checked below)
    ranked = dict(client.recommend(user_id=1, item_ids=[3, 5, 3, 5], k=0,
                                   candidate_features=own).items)
    assert ranked == pytest.approx({3: scores[0], 5: scores[1]})


def test_candidate_columns_score_as_candidate_features(served, trainer) -> None:
    # The columnar form of per-candidate features: one list per feature.
    servers, _, client, _ = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    items = [3, 5, 3, 7]
    own = [{"category": "c1", "price": 2.5}, {"category": "c2", "price": 9.0},
           {"category": "c3", "price": 0.5}, {"category": "c1", "price": 4.0}]
    columns = {"category": ["c1", "c2", "c3", "c1"], "price": [2.5, 9.0, 0.5, 4.0]}
    shared = {"country": "k1", "hour": 3}
    by_rows = client.predict(1, items, features=shared, candidate_features=own).scores
    by_columns = client.predict(1, items, features=shared, candidate_columns=columns).scores
    assert by_columns == by_rows and len(set(by_rows)) == 4
    assert client.recommend(1, items, k=0, features=shared, candidate_columns=columns).items \
        == client.recommend(1, items, k=0, features=shared, candidate_features=own).items


def test_bad_candidate_columns_get_invalid_argument_with_a_reason(served, trainer) -> None:
    servers, _, client, _ = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    channel = grpc.insecure_channel(f"127.0.0.1:{servers.port}")  # raw requests
    stub = serving_pb2_grpc.RecommenderStub(channel)
    column = serving_pb2.FeatureColumn
    cases = [
        (dict(candidate_columns={"category": column(strings=["a"])}),
         "one value per item_id (2)"),
        (dict(candidate_columns={"category": column(strings=["a", "b"], ids=[1, 2])}),
         "exactly one of strings, ids, numbers"),
        (dict(candidate_columns={"price": column(numbers=[1.0, float("inf")])}),
         "numbers must be finite"),
        (dict(candidate_columns={"": column(ids=[1, 2])}), "empty name"),
        (dict(candidate_columns={"category": column(strings=["a", "b"])},
              candidate_features=[serving_pb2.CandidateFeatures()] * 2),
         "not both"),
    ]
    for fields, reason in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(serving_pb2.PredictRequest(user_id=1, item_ids=[1, 2], **fields),
                         timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in info.value.details()
    channel.close()
    with pytest.raises(TypeError, match="one type"):
        client.predict(1, [1, 2], candidate_columns={"x": ["a", 1]})
    with pytest.raises(TypeError, match="not a single str"):  # not split into characters
        client.predict(1, [1, 2], candidate_columns={"category": "ab"})
    assert client.predict(1, [1, 2], candidate_columns={"x": [1, 2]}).model_version == 1
    # Any iterable: a generator, a numpy array (of numpy numbers).
    by_list = client.predict(1, [1, 2], candidate_columns={"price": [1.5, 2.5]}).scores
    assert client.predict(1, [1, 2], candidate_columns={
        "price": (p for p in (1.5, 2.5))}).scores == by_list
    assert client.predict(1, [1, 2], candidate_columns={
        "price": np.array([1.5, 2.5])}).scores == by_list


def test_request_size_limit_is_max_request_bytes(served) -> None:
    # One 5 MiB string: over gRPC's default 4 MiB receive limit, within max_candidates.
    request = serving_pb2.PredictRequest(
        user_id=1, item_ids=[1], features={"category": event_pb2.FeatureValues(
            strings=["x" * (5 << 20)])})
    registry = CollectorRegistry()
    larger = create_server(ServingConfig(port=0, sync_port=0, max_request_bytes=8 << 20),
                           ModelReplica(registry=registry), registry=registry)
    larger.start()
    try:
        for port, code in [(served[0].port, grpc.StatusCode.RESOURCE_EXHAUSTED),
                           (larger.port, grpc.StatusCode.FAILED_PRECONDITION)]:  # no model yet
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.RpcError) as info:
                    serving_pb2_grpc.RecommenderStub(channel).Predict(request, timeout=10)
            assert info.value.code() == code, info.value.details()
    finally:
        larger.stop(0)


def test_stop_reports_not_serving_but_answers_through_the_delay(trainer) -> None:
    registry = CollectorRegistry()
    replica = ModelReplica(registry=registry)
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN), replica,
                            registry=registry)
    servers.start()
    client = RecommenderClient(f"127.0.0.1:{servers.port}")
    s = sink(servers)
    s.push(TrainerParameters(trainer).snapshot(1))
    assert client.health() and client.health(RECOMMENDER)
    delay = 8.0  # generous: the checks below must fit in it on a loaded machine
    stopper = threading.Thread(target=servers.stop, args=(0, delay))
    t0 = time.monotonic()
    stopper.start()
    try:
        wait_until("health to turn NOT_SERVING", lambda: not client.health(), timeout_s=delay,
                   interval_s=0.02)
        assert not client.health(RECOMMENDER)
        # Requests are still answered, and a delta arriving meanwhile does not
        # make the replica ready again.
        assert client.predict(user_id=1, item_ids=[1, 2]).model_version == 1
        s.push(TrainerParameters(trainer).snapshot(2))
        assert not client.health(RECOMMENDER)
        assert stopper.is_alive(), "the checks above ran after the delay: machine too slow"
    finally:
        stopper.join()
        s.close()
    assert time.monotonic() - t0 >= delay
    with pytest.raises(grpc.RpcError) as info:
        client.predict(user_id=1, item_ids=[1])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_sync_port_requires_the_token_and_applies_nothing_without_it(served, trainer) -> None:
    servers, replica, _, _ = served
    for token in ("", "wrong"):
        with pytest.raises(SyncError, match="UNAUTHENTICATED"):
            sink(servers, token).push(TrainerParameters(trainer).snapshot(1))
    assert replica.version == 0


def test_a_delta_on_the_wrong_base_is_refused_with_failed_precondition(served, trainer) -> None:
    servers, replica, _, _ = served
    s = sink(servers)
    s.push(TrainerParameters(trainer).snapshot(4))
    with pytest.raises(SyncError) as info:
        s.push(replace(TrainerParameters(trainer).snapshot(9), full=False, base_version=7))
    assert type(info.value).__name__ == "VersionGapError"
    assert replica.version == 4


def test_concurrent_predicts_never_see_a_half_applied_delta(served, trainer) -> None:
    servers, replica, client, _ = served
    s = sink(servers)
    s.push(TrainerParameters(trainer).snapshot(1))
    dim = trainer.model.row_dim
    items = torch.arange(1, 2001)
    dense = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def delta(version: int) -> ParameterDelta:
        # Every item row and the bias move together; a request that saw a
        # mix of two versions would score its candidates differently.
        rows = torch.full((items.numel(), dim), 0.01 * version)
        dense["bias"] = torch.tensor([0.1 * version])
        return ParameterDelta(version, version - 1, False,
                              [TableDelta("item_id", dim, UpsertedRows(items, rows))],
                              DenseParameters(dict(dense)), 0, 0, "")

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
                   f"grace_s = 1.0\nshutdown_delay_s = 6.0\nworkers = 1\n"
                   f"[metrics]\nport = {metrics}\n")
    proc = start_cli(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    client = RecommenderClient(f"127.0.0.1:{port}", timeout_s=2)
    try:
        wait_until("the serve process to answer health checks", client.health, timeout_s=60)
        proc.terminate()
        # serving.shutdown_delay_s: NOT_SERVING, and requests still answered
        # (no model: FAILED_PRECONDITION, not UNAVAILABLE), before it stops.
        wait_until("health to turn NOT_SERVING after SIGTERM", lambda: not client.health(),
                   timeout_s=6.0, interval_s=0.05)
        with pytest.raises(grpc.RpcError) as info:
            client.predict(user_id=1, item_ids=[1])
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert proc.poll() is None
    finally:
        client.close()
        code = stop(proc)
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]

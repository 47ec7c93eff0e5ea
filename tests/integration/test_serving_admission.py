"""Admission control on a real gRPC port: past capacity, refuse at once; never score late."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.client import RecommenderClient
from streamrec.config import ServingConfig, load_config
from streamrec.ingest.batch import Batcher
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import Servers, create_server
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration
SCORING_S = 0.3


class SlowReplica(ModelReplica):
    """Scores as the replica does, after SCORING_S; counts what it scored."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry=registry)
        self.scored = 0
        self._count = threading.Lock()

    def _slow(self) -> None:
        time.sleep(SCORING_S)
        with self._count:
            self.scored += 1

    def predict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._slow()
        return super().predict(*args, **kwargs)

    def predict_columns(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._slow()
        return super().predict_columns(*args, **kwargs)


@pytest.fixture
def slow() -> Iterator[tuple[Servers, SlowReplica, CollectorRegistry]]:
    torch.set_num_threads(1)
    cfg = load_config(env={}, overrides={"model.history_features": "",
                                         "trainer.batch_size": "128"})
    trainer = OnlineTrainer.from_config(cfg)
    batcher = Batcher(cfg.model.sparse_features, cfg.model.dense_features)
    trainer.train_batch(batcher.build(list(SyntheticStream(default()).events(128))))
    registry = CollectorRegistry()
    replica = SlowReplica(registry)
    replica.apply(TrainerParameters(trainer).snapshot(1))
    servers = create_server(ServingConfig(port=0, sync_port=0, max_concurrent=1, max_queue=2,
                                          max_workers=16), replica, registry=registry)
    servers.start()
    yield servers, replica, registry
    servers.stop(0)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_past_capacity_requests_are_refused_at_once_and_counted(slow) -> None:
    servers, replica, registry = slow
    codes: list[grpc.StatusCode] = []
    waited: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        with RecommenderClient(f"127.0.0.1:{servers.port}", timeout_s=30) as client:
            t0 = time.monotonic()
            try:
                client.predict(user_id=1, item_ids=[1, 2, 3])
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                codes.append(code)
                waited.append(time.monotonic() - t0)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = codes.count(grpc.StatusCode.OK)
    refused = [w for c, w in zip(codes, waited) if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    # One scoring and two waiting at most: the rest are refused, not queued.
    assert ok + len(refused) == 8 and 3 <= ok <= 5 and refused, codes
    # Refused without waiting for the requests ahead of them to be scored.
    assert min(refused) < SCORING_S, waited
    assert replica.scored == ok
    assert _sample(registry, "streamrec_serving_shed_total", method="Predict",
                   reason="overload") == len(refused)
    assert _sample(registry, "streamrec_serving_requests_total", method="Predict",
                   code="RESOURCE_EXHAUSTED") == len(refused)
    assert _sample(registry, "streamrec_serving_in_flight") == 0


def test_a_request_whose_deadline_passes_while_it_waits_is_not_scored(slow) -> None:
    servers, replica, registry = slow
    address = f"127.0.0.1:{servers.port}"

    def occupy() -> None:
        with RecommenderClient(address, timeout_s=30) as client:
            client.predict(user_id=1, item_ids=[1])

    first = threading.Thread(target=occupy)
    first.start()
    time.sleep(SCORING_S / 3)  # the first holds the only slot
    with RecommenderClient(address, timeout_s=SCORING_S / 3) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(user_id=2, item_ids=[2])
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first.join(30)
    time.sleep(SCORING_S)  # anything the late request would have scored is done by now
    assert replica.scored == 1
    assert _sample(registry, "streamrec_serving_shed_total", method="Predict",
                   reason="deadline") == 1


def test_a_request_that_could_not_be_scored_in_time_is_refused_at_once(slow) -> None:
    servers, replica, registry = slow
    address = f"127.0.0.1:{servers.port}"
    with RecommenderClient(address, timeout_s=30) as client:
        client.predict(user_id=1, item_ids=[1])  # the replica learns how long scoring takes

    def occupy() -> None:
        with RecommenderClient(address, timeout_s=30) as client:
            client.predict(user_id=1, item_ids=[1])

    first = threading.Thread(target=occupy)
    first.start()
    time.sleep(SCORING_S / 3)
    with RecommenderClient(address, timeout_s=SCORING_S / 2) as client:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.predict(user_id=2, item_ids=[2])
        waited = time.monotonic() - t0
    first.join(30)
    # A slot frees in ~2/3 of a scoring time, more than the deadline allows: refused
    # at once (so the client can try another replica in time), never scored.
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert waited < SCORING_S / 2
    assert replica.scored == 2


def test_a_request_scored_past_its_deadline_is_not_counted_as_served(slow) -> None:
    servers, replica, registry = slow
    # A fresh replica has no scoring time yet: it admits, and learns it is too slow.
    with RecommenderClient(f"127.0.0.1:{servers.port}", timeout_s=SCORING_S / 2) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(user_id=1, item_ids=[1])
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while replica.scored < 1 or _sample(registry, "streamrec_serving_in_flight") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _sample(registry, "streamrec_serving_requests_total", method="Predict",
                   code="DEADLINE_EXCEEDED") == 1
    assert _sample(registry, "streamrec_serving_requests_total", method="Predict",
                   code="OK") == 0

"""The sync fan-out of a multi-process replica, over real gRPC servers in this process:
the trainer's push reaches every worker, a worker's gap comes back to the trainer, and
the catch-up log brings a new worker to the version the others hold."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from streamrec.config import ServingConfig
from streamrec.errors import SyncError, VersionGapError
from streamrec.protos import sync_pb2_grpc
from streamrec.serving.fanout import CatchUpLog, FanOutSync
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import Servers, create_server
from streamrec.serving.workers import fanout_server
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from tests.trained import small_trainer
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration
TOKEN, INNER = "outer-token", "inner-token"


@dataclass
class _Worker:
    index: int
    replica: ModelReplica
    servers: Servers
    channel: grpc.Channel
    stub: sync_pb2_grpc.ParameterSyncStub
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {INNER}"),)

    @classmethod
    def start(cls, index: int) -> _Worker:
        replica = ModelReplica(registry=CollectorRegistry())
        servers = create_server(ServingConfig(port=0, sync_port=0, token=INNER), replica)
        servers.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{servers.sync_port}")
        return cls(index, replica, servers, channel, sync_pb2_grpc.ParameterSyncStub(channel))

    def stop(self) -> None:
        self.channel.close()
        self.servers.stop(0)


@dataclass
class _Replica:
    workers: list[_Worker]
    catch_up: CatchUpLog
    registry: CollectorRegistry
    sink: GrpcDeltaSink


@pytest.fixture(scope="module")
def trainer() -> OnlineTrainer:
    return small_trainer()


@pytest.fixture
def replica() -> Iterator[_Replica]:
    workers = [_Worker.start(0), _Worker.start(1)]
    registry = CollectorRegistry()
    pushes = Counter("pushes", "", ["result"], registry=registry)
    catch_up = CatchUpLog()
    executor = futures.ThreadPoolExecutor(2)
    servicer = FanOutSync(lambda: workers, threading.Lock(), catch_up, executor, TOKEN, pushes)
    server, port = fanout_server(ServingConfig(port=0, sync_port=0, token=TOKEN), servicer)
    server.start()
    sink = GrpcDeltaSink(f"127.0.0.1:{port}", TOKEN, 65536, 10.0)
    yield _Replica(workers, catch_up, registry, sink)
    sink.close()
    server.stop(0).wait()
    executor.shutdown()
    for w in workers:
        w.stop()


def test_a_push_reaches_every_worker_and_a_gap_comes_back(replica: _Replica,
                                                          trainer: OnlineTrainer) -> None:
    assert replica.sink.push(TrainerParameters(trainer).snapshot(1)) == 1
    assert [w.replica.version for w in replica.workers] == [1, 1]
    # Worker 1 restarts empty: the next delta is a gap there, and the trainer hears it.
    replica.workers[1].stop()
    replica.workers[1] = _Worker.start(1)
    assert replica.sink.version() == 0
    with pytest.raises(VersionGapError):
        replica.sink.push(TrainerParameters(trainer).collect_delta(2))
    assert [w.replica.version for w in replica.workers] == [2, 0]
    # The snapshot it then sends: worker 0 holds that version already, worker 1 takes it.
    assert replica.sink.push(TrainerParameters(trainer).snapshot(2)) == 2
    assert [w.replica.version for w in replica.workers] == [2, 2]
    assert replica.sink.version() == 2
    assert replica.registry.get_sample_value("pushes_total", {"result": "gap"}) == 1


def test_a_new_worker_catches_up_from_the_log(replica: _Replica,
                                              trainer: OnlineTrainer) -> None:
    replica.sink.push(TrainerParameters(trainer).snapshot(10))
    replica.sink.push(TrainerParameters(trainer).collect_delta(11))
    replica.sink.push(TrainerParameters(trainer).collect_delta(12))
    fresh = _Worker.start(2)
    try:
        assert replica.catch_up.replay(fresh, timeout_s=10) == 12
        assert fresh.replica.version == 12
        # It scores as the workers that took the pushes live.
        items = list(range(1, 50))
        assert fresh.replica.predict(1, items) == replica.workers[0].replica.predict(1, items)
    finally:
        fresh.stop()


def test_a_push_every_worker_refuses_is_refused(replica: _Replica,
                                                trainer: OnlineTrainer) -> None:
    replica.sink.push(TrainerParameters(trainer).snapshot(20))
    with pytest.raises(VersionGapError):  # stale everywhere: FAILED_PRECONDITION
        replica.sink.push(TrainerParameters(trainer).snapshot(5))
    bad = GrpcDeltaSink(replica.sink.address, "wrong-token", 65536, 10.0)
    with pytest.raises(SyncError, match="UNAUTHENTICATED"):
        bad.push(TrainerParameters(trainer).collect_delta(21))
    bad.close()
    assert [w.replica.version for w in replica.workers] == [20, 20]
    assert replica.catch_up.version == 20

"""A replica as worker processes (serving.workers = 2): one public port, one sync port,
real processes on real ports; a worker killed with SIGKILL comes back and catches up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from streamrec.protos import serving_pb2, serving_pb2_grpc
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from tests.integration.processes import child_pids, free_port, scrape, start_cli, stop, wait_until
from tests.trained import small_trainer
from streamrec.trainer.parameters import TrainerParameters

TOKEN = "workers-token"
WORKERS = 2


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    metrics: int
    sink: GrpcDeltaSink
    trainer: OnlineTrainer
    log: Path

    def sample(self, name: str, worker: int, **labels: str) -> float | None:
        want = {**labels, "worker": str(worker)}
        for key, value in scrape(self.metrics).items():
            metric, _, rest = key.partition("{")
            if metric == name and all(f'{k}="{v}"' in rest for k, v in want.items()):
                return value
        return None

    def versions(self) -> list[float | None]:
        return [self.sample("streamrec_serving_model_version", i) for i in range(WORKERS)]


def _stub_on_new_connection(port: int) -> tuple[grpc.Channel, serving_pb2_grpc.RecommenderStub]:
    # A channel of its own (no shared subchannel): a new TCP connection, which
    # the kernel hands to one of the workers.
    channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                    options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, serving_pb2_grpc.RecommenderStub(channel)


def _predict(port: int, items: list[int]) -> serving_pb2.PredictResponse:
    channel, stub = _stub_on_new_connection(port)
    with channel:
        return stub.Predict(serving_pb2.PredictRequest(user_id=1, item_ids=items), timeout=10)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("workers")
    port, sync_port, metrics = free_port(), free_port(), free_port()
    cfg = tmp / "serving.toml"
    cfg.write_text(f"[serving]\nport = {port}\nsync_port = {sync_port}\ntoken = \"{TOKEN}\"\n"
                   f"workers = {WORKERS}\ngrace_s = 1.0\nshutdown_delay_s = 6.0\n"
                   f"[metrics]\nport = {metrics}\n")
    log = tmp / "serve.log"
    proc = start_cli(["serve", "--config", str(cfg)], log)
    sink = GrpcDeltaSink(f"127.0.0.1:{sync_port}", TOKEN, timeout_s=60)
    try:
        wait_until("both workers up", lambda: scrape(metrics).get(
            "streamrec_serving_workers_up") == WORKERS, timeout_s=180)
        yield Replica(proc, port, metrics, sink, small_trainer(), log)
    finally:
        sink.close()
        code = stop(proc)
        assert code == 0, log.read_text()[-3000:]


def test_a_push_reaches_every_worker(replica: Replica) -> None:
    t = replica.trainer
    assert replica.sink.push(TrainerParameters(t).snapshot(1)) == 1
    assert replica.sink.push(TrainerParameters(t).collect_delta(2)) == 2
    assert replica.sink.version() == 2
    assert replica.versions() == [2.0] * WORKERS
    for _ in range(8):  # whichever worker a connection lands on answers version 2
        assert _predict(replica.port, [1, 2, 3]).model_version == 2


def test_requests_are_answered_by_every_worker(replica: Replica) -> None:
    def answered(worker: int) -> float:
        return replica.sample("streamrec_serving_requests_total", worker,
                              method="Predict", code="OK") or 0.0

    before = [answered(i) for i in range(WORKERS)]
    for _ in range(64):  # new connections until each worker has answered one
        _predict(replica.port, [1, 2, 3])
        if all(answered(i) > before[i] for i in range(WORKERS)):
            break
    assert all(answered(i) > before[i] for i in range(WORKERS)), \
        [answered(i) for i in range(WORKERS)]


def test_a_killed_worker_is_replaced_and_catches_up(replica: Replica) -> None:
    pids = child_pids(replica.proc.pid)
    assert len(pids) == WORKERS
    os.kill(pids[0], signal.SIGKILL)
    wait_until("the worker to be restarted", lambda: replica.sample(
        "streamrec_serving_model_version", 0) is not None and set(child_pids(
            replica.proc.pid)) - set(pids) and replica.versions() == [2.0] * WORKERS,
        timeout_s=180)
    assert scrape(replica.metrics)["streamrec_serving_worker_restarts_total"] == 1
    # Caught up from the parent's log: the next delta follows on, no snapshot needed.
    assert replica.sink.push(TrainerParameters(replica.trainer).collect_delta(3)) == 3
    assert replica.versions() == [3.0] * WORKERS
    assert "exited with code -9: restarting it" in replica.log.read_text()


def test_sigterm_turns_every_worker_not_serving_then_drains(replica: Replica) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def statuses() -> set[int]:
        seen = set()
        for _ in range(16):
            channel = grpc.insecure_channel(f"127.0.0.1:{replica.port}",
                                            options=[("grpc.use_local_subchannel_pool", 1)])
            with channel:
                seen.add(health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="streamrec.serving.Recommender"),
                    timeout=5).status)
        return seen

    assert statuses() == {health_pb2.HealthCheckResponse.SERVING}
    served = {int(v) for v in replica.versions() if v is not None}
    replica.proc.terminate()
    wait_until("every worker to report NOT_SERVING", lambda: statuses() == {
        health_pb2.HealthCheckResponse.NOT_SERVING}, timeout_s=3.0, interval_s=0.05)
    # Still answering during serving.shutdown_delay_s.
    assert _predict(replica.port, [1, 2]).model_version in served
    assert replica.proc.wait(30) == 0


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    # No orphans left holding the port: the next start on it must succeed.
    port, sync_port, metrics = free_port(), free_port(), free_port()
    cfg = tmp_path / "serving.toml"
    cfg.write_text(f"[serving]\nport = {port}\nsync_port = {sync_port}\ntoken = \"{TOKEN}\"\n"
                   f"workers = {WORKERS}\n[metrics]\nport = {metrics}\n")
    proc = start_cli(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    try:
        wait_until("both workers up", lambda: scrape(metrics).get(
            "streamrec_serving_workers_up") == WORKERS, timeout_s=180)
        workers = child_pids(proc.pid)
        proc.kill()
        proc.wait()
        wait_until("the workers to exit", lambda: not any(
            Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers),
            timeout_s=30)
    finally:
        stop(proc)
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"

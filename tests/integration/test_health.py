"""The gRPC health protocol on a replica: Check, List, and Watch (on each change only)."""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import RECOMMENDER, create_server
from streamrec.config import ServingConfig
from tests.integration.string_ids import TOKEN, model_fixture, served_fixture  # noqa: F401
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_list_answers_every_service(served) -> None:
    servers, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{servers.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(),
                                                         timeout=5)
    assert {name: s.status for name, s in reply.statuses.items()} == {
        "": SERVING, RECOMMENDER: SERVING}


def test_health_watch_sends_a_message_on_each_change_only(model) -> None:
    registry = CollectorRegistry()
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN),
                            ModelReplica(registry=registry), registry=registry)
    servers.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{servers.port}")
    sink = GrpcDeltaSink(f"127.0.0.1:{servers.sync_port}", TOKEN, 65536, 5.0)
    seen: queue.Queue[int] = queue.Queue()
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=RECOMMENDER))

    def read() -> None:
        try:
            for message in stream:
                seen.put(message.status)
        except grpc.RpcError:  # cancelled at the end of the test
            pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert seen.get(timeout=10) == NOT_SERVING  # the current status, at once
        for version in (1, 2, 3):  # every applied delta sets SERVING again
            assert sink.push(TrainerParameters(model.trainer).snapshot(version)) == version
        assert seen.get(timeout=10) == SERVING
        stopper = threading.Thread(target=servers.stop, args=(0, 1.0))
        stopper.start()
        assert seen.get(timeout=10) == NOT_SERVING
        stopper.join()
    finally:
        stream.cancel()
        reader.join()
        sink.close()
        channel.close()
        servers.stop(0)
    assert seen.empty(), "Watch repeated a status that did not change"

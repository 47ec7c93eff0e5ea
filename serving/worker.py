"""One worker process of a multi-process replica (``python -m streamrec.serving.worker``).

The parent (serving/workers.py) starts it and speaks JSON lines with it:

- stdin, first line: ``{"serving": {ServingConfig fields}, "index": i}``; the
  public port is shared (SO_REUSEPORT), the sync port is a private one on
  127.0.0.1 that only the parent pushes to (with the token it chose);
- stdout, one line once serving: ``{"pid", "sync_port", "metrics_port"}``;
- stdin, then: ``{"cmd": "drain"}`` (health NOT_SERVING, calls still
  answered) and ``{"cmd": "stop", "grace_s": g}`` (drain in-flight calls
  for g seconds and exit). End of input means the parent is gone: the worker
  stops at once rather than serve on, orphaned.

SIGINT and SIGTERM are ignored: a terminal's Ctrl-C reaches the whole process
group, and shutdown is the parent's to pace.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import IO

from prometheus_client import REGISTRY

from streamrec.config import ServingConfig
from streamrec.runtime import serve_metrics, tune_gc
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import create_server

__all__ = ["main"]

log = logging.getLogger(__name__)


def _protocol_out() -> IO[str]:
    """A private copy of stdout for the protocol; stray prints go to stderr instead."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    out = _protocol_out()
    hello = json.loads(sys.stdin.readline())
    index = int(hello["index"])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    config = ServingConfig(**hello["serving"])
    tune_gc()
    replica = ModelReplica(registry=REGISTRY)
    servers = create_server(config, replica, share_port=True)
    metrics_port = serve_metrics("127.0.0.1", 0)
    servers.start()
    out.write(json.dumps({"pid": os.getpid(), "sync_port": servers.sync_port,
                          "metrics_port": metrics_port}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "drain":
            servers.health.enter_graceful_shutdown()
        elif command["cmd"] == "stop":
            servers.stop(float(command["grace_s"]))
            return 0
    log.warning("the parent process is gone: stopping")
    servers.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

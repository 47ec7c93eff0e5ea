"""A replica that serves from every core: worker processes behind one public port.

``serve_workers`` runs ``serving.workers`` processes (serving/worker.py), each
a full :class:`~streamrec.serving.replica.ModelReplica` with its own public
gRPC server (Predict, Recommend, health, reflection) bound to the same port
with SO_REUSEPORT: the kernel spreads connections over them, so a client
spreads its load over workers by opening several connections. The parent
owns the one authenticated sync port and fans every push out to the
workers' private sync servers (serving/fanout.py), serves one /metrics for
all (serving/worker_metrics.py), restarts a worker that dies (it replays the
last snapshot and deltas before it joins), and paces shutdown: SIGTERM turns
every worker's health NOT_SERVING, waits ``serving.shutdown_delay_s``, then
gives in-flight calls ``serving.grace_s``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from streamrec.config import SYNC_MAX_MESSAGE_BYTES, AppConfig, ServingConfig
from streamrec.errors import StreamrecError
from streamrec.protos import sync_pb2_grpc
from streamrec.runtime import serve_metrics
from streamrec.serving.fanout import PUSH_RESULTS, CatchUpLog, FanOutSync
from streamrec.serving.undecodable import InvalidArgumentOnUndecodable
from streamrec.serving.worker_metrics import WorkerMetricsCollector

__all__ = ["WorkerPool", "serve_workers", "fanout_server", "reserve_port"]

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # holds the streamrec package
_START_TIMEOUT_S = 120.0
_RESTART_BACKOFF_S = 1.0


@dataclass
class Worker:
    """A started worker process and the private ports it listens on."""

    index: int
    proc: subprocess.Popen[str]
    sync_port: int
    metrics_port: int
    channel: grpc.Channel
    stub: sync_pb2_grpc.ParameterSyncStub
    metadata: tuple[tuple[str, str], ...]

    def send(self, command: dict[str, Any]) -> None:
        """Write one control line; a worker already gone is not an error here."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close(self) -> None:
        self.channel.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass


class WorkerPool:
    """``count`` worker processes on ``config.port`` (already resolved: not 0).

    ``lock`` serialises pushes (serving/fanout.py) with the catch-up of a
    restarted worker, which joins ``live()`` only once it has replayed the log.
    """

    def __init__(self, config: ServingConfig, count: int, registry: CollectorRegistry) -> None:
        # The workers' sync ports are private: a token of the parent's own,
        # so only the parent can push to them.
        self.token = secrets.token_urlsafe(24)
        self.worker_config = dataclasses.replace(
            config, sync_host="127.0.0.1", sync_port=0, token=self.token, workers=1)
        self.count = count
        self.grace_s = config.grace_s
        self.lock = threading.Lock()
        self.catch_up = CatchUpLog()
        self.slots: list[Worker | None] = [None] * count
        self.executor = futures.ThreadPoolExecutor(count, thread_name_prefix="fanout")
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="workers", daemon=True)
        self.restarts = Counter(
            "streamrec_serving_worker_restarts_total",
            "Worker processes that died and were restarted (each replays the last snapshot "
            "and deltas before it serves)", registry=registry)
        Gauge("streamrec_serving_workers_up", "Worker processes serving now",
              registry=registry).set_function(lambda: len(self.live()))
        Gauge("streamrec_serving_workers", "Worker processes configured (serving.workers)",
              registry=registry).set(count)
        self.pushes = Counter("streamrec_serving_fanout_pushes_total",
                              "Pushes received on the sync port, by the answer given",
                              ["result"], registry=registry)
        for result in PUSH_RESULTS:
            self.pushes.labels(result)

    def live(self) -> list[Worker]:
        return [w for w in self.slots if w is not None and w.proc.poll() is None]

    def slot_view(self) -> list[Worker | None]:
        """One entry per worker: None while it starts or catches up."""
        return [w if w is not None and w.proc.poll() is None else None for w in self.slots]

    def metrics_targets(self) -> list[tuple[int, int]]:
        return [(w.index, w.metrics_port) for w in self.live()]

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        # One torch thread per worker: the workers are the parallelism.
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.Popen([sys.executable, "-m", "streamrec.serving.worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"serving": dataclasses.asdict(self.worker_config),
                                     "index": index}) + "\n")
        proc.stdin.flush()
        return proc

    def _hello(self, index: int, proc: subprocess.Popen[str]) -> Worker:
        """Wait for the worker's ports; RuntimeError if it exits or stays silent."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            raise RuntimeError(f"serving worker {index} exited with code {proc.wait()} before "
                               f"it served (its log is above)")
        hello = json.loads(line)
        channel = grpc.insecure_channel(f"127.0.0.1:{hello['sync_port']}", options=[
            ("grpc.max_send_message_length", SYNC_MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", SYNC_MAX_MESSAGE_BYTES)])
        log.info("worker %d serving: pid %d", index, hello["pid"])
        return Worker(index, proc, hello["sync_port"], hello["metrics_port"], channel,
                      sync_pb2_grpc.ParameterSyncStub(channel),
                      (("authorization", f"Bearer {self.token}"),))

    def start(self) -> None:
        """Start every worker (in parallel) and the watcher that restarts them."""
        procs = [self._spawn(i) for i in range(self.count)]
        try:
            for i, proc in enumerate(procs):
                self.slots[i] = self._hello(i, proc)
        except RuntimeError:
            self._stopping.set()
            for proc in procs:
                proc.kill()
                proc.wait()
            for w in self.slots:
                if w is not None:
                    w.close()
            raise
        self._watcher.start()

    def _restart(self, index: int) -> None:
        worker = self._hello(index, self._spawn(index))
        with self.lock:
            try:
                version = self.catch_up.replay(worker, timeout_s=60.0)
            except grpc.RpcError as e:  # the trainer's next push finds the gap
                version = 0
                log.warning("worker %d: catch-up failed (%s); it waits for a snapshot",
                            index, e.code().name)
            self.slots[index] = worker
        log.info("worker %d restarted (pid %d) at version %d", index, worker.proc.pid, version)

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for index, worker in enumerate(self.slots):
                if worker is None or worker.proc.poll() is None:
                    continue
                if self._stopping.is_set():
                    return
                log.error("serving worker %d (pid %d) exited with code %s: restarting it",
                          index, worker.proc.pid, worker.proc.returncode)
                self.restarts.inc()
                worker.close()
                while not self._stopping.is_set():
                    try:
                        self._restart(index)
                        break
                    except RuntimeError as e:
                        log.error("%s; trying again", e)
                        self._stopping.wait(_RESTART_BACKOFF_S)

    def drain(self) -> None:
        """Every worker reports NOT_SERVING from now on, and goes on answering."""
        self._stopping.set()
        for w in self.live():
            w.send({"cmd": "drain"})

    def stop(self, grace_s: float) -> None:
        """Stop every worker, in-flight calls given ``grace_s``; kill any that outlast it."""
        self._stopping.set()
        workers = [w for w in self.slots if w is not None]
        for w in workers:
            w.send({"cmd": "stop", "grace_s": grace_s})
        deadline = time.monotonic() + grace_s + 10.0
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killing it", w.index)
                w.proc.kill()
                w.proc.wait()
            w.close()
        self.executor.shutdown(wait=False)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with SO_REUSEPORT, holding the port.

    The port is first bound without SO_REUSEPORT, so a port that anything
    else holds (another replica too) is refused with OSError naming it,
    rather than shared. Port 0 picks a free one: read it off the socket.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError:
            raise OSError(f"cannot bind serving port {host}:{port} (in use, or not a local "
                          f"address)") from None
        address = probe.getsockname()
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(address)
    return held


def fanout_server(config: ServingConfig, servicer: FanOutSync) -> tuple[grpc.Server, int]:
    """Build (not start) the replica's sync server on ``sync_host:sync_port``; and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sync"),
                         options=[("grpc.max_receive_message_length", SYNC_MAX_MESSAGE_BYTES),
                                  ("grpc.so_reuseport", 0)],
                         interceptors=[InvalidArgumentOnUndecodable()])
    sync_pb2_grpc.add_ParameterSyncServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(f"{config.sync_host}:{config.sync_port}")
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot bind sync port {config.sync_host}:{config.sync_port} (in use, "
                      f"or not a local address)")
    return server, port


def serve_workers(config: AppConfig, stop: threading.Event | None = None) -> None:
    """Run a replica as ``serving.worker_count()`` processes until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or threading.Event()
    serving = config.serving
    if not serving.token:
        log.warning("serving.token is empty: the sync port accepts parameters from anyone")
    count = serving.worker_count()
    held = reserve_port(serving.host, serving.port)
    registry = CollectorRegistry()
    pool = WorkerPool(dataclasses.replace(serving, port=held.getsockname()[1]), count, registry)
    try:
        sync, sync_port = fanout_server(serving, FanOutSync(
            pool.slot_view, pool.lock, pool.catch_up, pool.executor, serving.token, pool.pushes))
    except OSError:
        held.close()
        raise
    registry.register(WorkerMetricsCollector(pool.metrics_targets))
    try:
        if config.metrics.port >= 0:
            port = serve_metrics(config.metrics.host, config.metrics.port, registry)
            log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        pool.start()
    except RuntimeError as e:
        raise StreamrecError(str(e)) from None
    finally:
        if not pool.slots[0]:
            held.close()
    sync.start()
    log.info("serving on %s:%d with %d worker processes, sync on %s:%d", serving.host,
             held.getsockname()[1], count, serving.sync_host, sync_port)
    stop.wait()
    log.info("shutting down: NOT_SERVING for %.1f s, then grace %.1f s",
             serving.shutdown_delay_s, serving.grace_s)
    pool.drain()
    if serving.shutdown_delay_s > 0:
        time.sleep(serving.shutdown_delay_s)
    done = sync.stop(serving.grace_s)
    pool.stop(serving.grace_s)
    done.wait()
    held.close()

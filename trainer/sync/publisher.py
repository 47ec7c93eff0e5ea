"""The publisher: every ``interval_s`` it sends what changed to every replica.

Each round asks every replica for its version (``GetVersion``, concurrently),
then sends, concurrently too:

- the delta (rows touched and ids evicted since the previous version) to a
  replica at the previous version that this publisher sent it: it is in step,
  including one that applied a push after the push's deadline had passed;
- a full snapshot to any other replica that answered (new, restarted empty,
  behind, or fed by an earlier run of the trainer).

The delta and the snapshot are read under one hold of the trainer's lock, so
two replicas at one version serve one model. Versions never go back or repeat:
when a replica reports a version at or above the next one (after a trainer
restart from a checkpoint older than what was published), the round jumps
past it and every replica gets the snapshot. A replica that does not answer,
or is still busy with an earlier push, sits the round out: the round waits at
most ``interval_s`` for it, so a hung replica holds the others back by no more.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

from prometheus_client import CollectorRegistry

from streamrec.errors import SyncError, VersionGapError
from trainer.sync.delta import ParameterDelta
from trainer.sync.metrics import SyncMetrics
from trainer.sync.sink import DeltaSink

__all__ = ["Publisher", "ParameterSource"]

log = logging.getLogger(__name__)


class ParameterSource(Protocol):
    """What the publisher reads (the OnlineTrainer).

    ``lock`` is reentrant and is what ``collect_delta`` and ``snapshot`` take:
    the publisher holds it across both so they describe one state.
    """

    lock: threading.RLock

    def collect_delta(self, version: int) -> ParameterDelta: ...
    def snapshot(self, version: int) -> ParameterDelta: ...


class Publisher:
    """Pushes versioned deltas from ``source`` to ``sinks`` on a background thread."""

    def __init__(self, source: ParameterSource, sinks: dict[str, DeltaSink], interval_s: float,
                 registry: CollectorRegistry | None = None, start_version: int = 0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s}: must be > 0")
        self.source = source
        self.sinks = dict(sinks)
        self.interval_s = interval_s
        self._version = start_version
        # The version this publisher last sent to each replica (None: nothing
        # yet). Only a version sent by this publisher proves a replica in
        # step: after a trainer restart, equal numbers may name other states.
        self._sent: dict[str, int | None] = {name: None for name in self.sinks}
        # What each replica's worker is busy with (a probe or a push).
        self._busy: dict[str, Future[object]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sinks)),
                                        thread_name_prefix="streamrec-push")
        self.metrics = SyncMetrics(list(self.sinks), registry)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="streamrec-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last publish, so serving gets the final state."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.publish_once(wait_all=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish_once()
            except Exception:  # never let one bad interval kill sync for good
                log.exception("publishing parameters failed")

    def _kind(self, name: str) -> str:
        return "delta" if self._sent.get(name) == self._version else "full"

    def _submit(self, name: str, work: object, *args: object) -> Future[object]:
        future = self._pool.submit(work, *args)  # type: ignore[arg-type]
        self._busy[name] = future
        return future

    def _probe(self) -> dict[str, int]:
        """Versions of the replicas that answer within one interval (and are not busy)."""
        asked = {name: self._submit(name, sink.version) for name, sink in self.sinks.items()
                 if name not in self._busy or self._busy[name].done()}
        wait(asked.values(), timeout=self.interval_s)
        versions = {}
        for name, future in asked.items():
            if not future.done():
                log.warning("replica %s did not report its version within %.1f s",
                            name, self.interval_s)
                continue
            try:
                versions[name] = int(future.result())  # type: ignore[call-overload]
            except SyncError as e:
                self.metrics.pushes.labels(name, self._kind(name), "error").inc()
                log.warning("replica %s unreachable: %s", name, e)
        return versions

    def _push(self, name: str, sink: DeltaSink, delta: ParameterDelta) -> None:
        kind = "full" if delta.full else "delta"
        t0 = time.perf_counter()
        try:
            acked = sink.push(delta)
        except VersionGapError:
            # Moved between the probe and the push (restarted): the next round
            # sees its version and resyncs it.
            self.metrics.pushes.labels(name, kind, "gap").inc()
            log.info("replica %s is out of step; it gets a full snapshot next round", name)
            return
        except SyncError as e:
            self.metrics.pushes.labels(name, kind, "error").inc()
            log.warning("push of version %d to %s failed: %s", delta.version, name, e)
            return
        self.metrics.push_seconds.labels(kind).observe(time.perf_counter() - t0)
        self.metrics.pushes.labels(name, kind, "ok").inc()
        self.metrics.rows.labels(kind).inc(delta.num_rows())
        self.metrics.replica_version.labels(name).set(acked)

    def publish_once(self, *, wait_all: bool = False) -> int:
        """Publish the next version to every replica that answers; returns that version.

        Waits for the pushes up to ``interval_s`` (``wait_all``: until each ends,
        within its sink's own deadline). A push still running goes on in the
        background, and its replica sits out the rounds until it ends.
        """
        with self._lock:
            reported = self._probe()
            version = self._version + 1
            in_step = [n for n, v in reported.items()
                       if v == self._version and self._sent[n] == self._version]
            ahead = max(reported.values(), default=0)
            if ahead >= version:
                log.warning("a replica is at version %d, ahead of this trainer's %d (restarted "
                            "from an older checkpoint?): publishing version %d to all",
                            ahead, self._version, ahead + 1)
                version, in_step = ahead + 1, []
            behind = [n for n in reported if n not in in_step]
            with self.source.lock:  # one state for the delta and the snapshot
                delta = self.source.collect_delta(version)
                snapshot = self.source.snapshot(version) if behind else None
            pushes = []
            for name in in_step:
                pushes.append(self._submit(name, self._push, name, self.sinks[name], delta))
            for name in behind:
                pushes.append(self._submit(name, self._push, name, self.sinks[name], snapshot))
            for name in (*in_step, *behind):
                self._sent[name] = version
            wait(pushes, timeout=None if wait_all else self.interval_s)
            self._version = version
            self.metrics.version.set(version)
            return version

    def close(self) -> None:
        """Stop, then release the push threads (waiting for pushes in flight)."""
        self.stop()
        self._pool.shutdown(wait=True)

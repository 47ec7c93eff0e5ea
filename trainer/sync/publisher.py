"""The publisher: every ``interval_s`` it sends what changed to every replica.

Each replica is tracked on its own, so a slow or dead replica never holds
the others back. A replica that is new, restarted empty, reports a version
gap, or failed a push is brought back with a full snapshot; otherwise it
gets the delta (rows touched and ids evicted since the previous version).
``collect_delta`` drains the trainer's touched-row tracking, so one delta is
collected per interval and sent to every replica that is in step.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from prometheus_client import CollectorRegistry

from streamrec.errors import SyncError, VersionGapError
from trainer.sync.delta import ParameterDelta
from trainer.sync.metrics import SyncMetrics
from trainer.sync.sink import DeltaSink

__all__ = ["Publisher", "ParameterSource"]

log = logging.getLogger(__name__)


class ParameterSource(Protocol):
    """What the publisher reads (the OnlineTrainer)."""

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
        # Every replica starts with a full snapshot: after a trainer restart
        # its versions may be ahead of or behind the checkpoint's.
        self._in_step = {name: False for name in self.sinks}
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
        self.publish_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish_once()
            except Exception:  # never let one bad interval kill sync for good
                log.exception("publishing parameters failed")

    def _push(self, name: str, sink: DeltaSink, delta: ParameterDelta) -> None:
        kind = "full" if delta.full else "delta"
        t0 = time.perf_counter()
        acked = sink.push(delta)
        self.metrics.push_seconds.labels(kind).observe(time.perf_counter() - t0)
        self.metrics.pushes.labels(name, kind, "ok").inc()
        self.metrics.rows.labels(kind).inc(delta.num_rows())
        self.metrics.replica_version.labels(name).set(acked)

    def publish_once(self) -> int:
        """Publish the next version to every replica; returns that version."""
        with self._lock:
            version = self._version + 1
            delta = self.source.collect_delta(version)
            snapshot: ParameterDelta | None = None
            for name, sink in self.sinks.items():
                kind = "delta"
                try:
                    if self._in_step[name]:
                        try:
                            self._push(name, sink, delta)
                            continue
                        except VersionGapError:
                            self.metrics.pushes.labels(name, "delta", "gap").inc()
                            log.info("replica %s is out of step; sending a full snapshot", name)
                    kind = "full"
                    # Reachable at all? A full snapshot is built under the
                    # trainer's lock; for a replica that is down it would
                    # stall training every interval for nothing.
                    sink.version()
                    if snapshot is None:
                        snapshot = self.source.snapshot(version)
                    self._push(name, sink, snapshot)
                    self._in_step[name] = True
                except SyncError as e:
                    self._in_step[name] = False
                    self.metrics.pushes.labels(name, kind, "error").inc()
                    log.warning("push of version %d to %s failed: %s", version, name, e)
            self._version = version
            self.metrics.version.set(version)
            return version

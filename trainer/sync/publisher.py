"""The publisher: after each training step (at most every ``min_interval_s``),
and at least every ``interval_s``, it sends what changed to every replica.

A round makes a new version only when the parameters changed since the last
one (rows touched or evicted, or dense weights that differ): while the
trainer learns nothing, versions stand still, and a replica behind or empty
gets the last version again, unchanged (from held deltas, with the last dense
weights, or a snapshot).

Each round asks every replica for its version (``GetVersion``, concurrently),
then sends, concurrently too, each replica on its own worker thread:

- the round's delta (rows touched and ids evicted since the previous version)
  to a replica at the previous version;
- to a replica a few versions behind that this publisher has pushed to (a
  push that outlasted its deadline or the round, a missed round), the deltas
  it missed, kept for the last ``max_lag`` versions without their dense
  weights, merged with the round's into one delta it applies atomically;
- a full snapshot to any other replica that answered (new, restarted empty,
  further behind, or fed by an earlier run of the trainer).

The delta and the snapshot are read under one hold of the trainer's lock, so
two replicas at one version serve one model. Versions never go back or repeat:
when a replica reports a version at or above the next one (after a trainer
restart from a checkpoint older than what was published), the round jumps
past it and every replica gets the snapshot. A replica that does not answer,
or is still busy with an earlier push, sits the round out: the round waits at
most ``interval_s`` for it, so a hung replica holds the others back by no more.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from streamrec.errors import StaleVersionError, SyncError, VersionGapError
from streamrec.model.delta import DenseParameters, ParameterDelta, merge_deltas
from streamrec.trainer.sync.metrics import SyncMetrics
from streamrec.trainer.sync.sink import DeltaSink

__all__ = ["Publisher", "ParameterSource"]

log = logging.getLogger(__name__)


class ParameterSource(Protocol):
    """What the publisher reads (trainer.parameters.TrainerParameters).

    ``lock`` is reentrant and is what ``collect_delta`` and ``snapshot`` take:
    the publisher holds it across both so they describe one state.
    """

    lock: threading.RLock

    def collect_delta(self, version: int) -> ParameterDelta: ...
    def snapshot(self, version: int) -> ParameterDelta: ...


class Publisher:
    """Pushes versioned deltas from ``source`` to ``sinks`` on a background thread.

    ``sinks`` may change between rounds (a replica added or removed).
    """

    def __init__(self, source: ParameterSource, sinks: dict[str, DeltaSink], interval_s: float,
                 registry: CollectorRegistry | None = None, start_version: int = 0,
                 max_lag: int = 32, min_interval_s: float = 0.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s}: must be > 0")
        if not 0 <= min_interval_s <= interval_s:
            raise ValueError(f"min_interval_s={min_interval_s}: must be in [0, interval_s]")
        if max_lag < 1:
            raise ValueError(f"max_lag={max_lag}: must be >= 1")
        self.source = source
        self.sinks = dict(sinks)
        self.interval_s = interval_s
        self.min_interval_s = min_interval_s
        self.max_lag = max_lag
        self._version = start_version
        # The first version this publisher made. Versions below it (the
        # checkpoint's, an earlier run's) may name other states, so a replica
        # there gets a snapshot. Deltas of the recent versions, by version,
        # for replicas that fell a little behind.
        self._lineage = start_version + 1
        self._deltas: dict[int, ParameterDelta] = {}
        # The dense weights of the last version published (None: none yet),
        # to tell a round where nothing was learned.
        self._published_dense: DenseParameters | None = None
        # What this publisher pushed to each replica since the lineage began:
        # only a replica at one of those versions holds this publisher's state
        # (another at an equal number holds an earlier run's).
        self._acked: dict[str, int] = {}  # the last version each acknowledged
        self._tried: dict[str, int] = {}  # the last version sent to each
        self._in_step: set[str] = set()  # got the last round's delta (metric labels)
        # One worker thread per replica: a hung one holds up only itself.
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._busy: dict[str, Future[object]] = {}
        self.metrics = SyncMetrics(list(self.sinks), registry)
        self._stop = threading.Event()
        self._learned = threading.Event()  # set by notify(): a step changed the parameters
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
        """Stop the thread after one last publish, so serving gets the final state.

        Pushes still running are waited for first (each within its sink's own
        deadline), so a replica busy at shutdown gets the last version too.
        """
        if self._thread is None:
            return
        self._stop.set()
        self._learned.set()
        self._thread.join()
        self._thread = None
        wait(list(self._busy.values()))
        self.publish_once(wait_all=True)

    def close(self) -> None:
        """Stop, then end the worker threads."""
        self.stop()
        for worker in self._workers.values():
            worker.shutdown(wait=True)
        self._workers.clear()

    def notify(self) -> None:
        """A training step changed the parameters: publish them soon (the loop calls this)."""
        self._learned.set()

    def _run(self) -> None:
        while True:
            self._learned.wait(self.interval_s)
            if self._stop.is_set():
                return
            self._learned.clear()
            started = time.monotonic()
            try:
                self.publish_once()
            except Exception:  # never let one bad round kill sync for good
                log.exception("publishing parameters failed")
            # Bounded rate: a fast trainer publishes every min_interval_s, not every step.
            if self._stop.wait(self.min_interval_s - (time.monotonic() - started)):
                return

    def _submit(self, name: str, work: Callable[..., object], *args: object) -> Future[object]:
        worker = self._workers.get(name)
        if worker is None:
            worker = self._workers[name] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"streamrec-push-{name}")
        future = worker.submit(work, *args)
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
                kind = "delta" if name in self._in_step else "full"
                self.metrics.pushes.labels(name, kind, "error").inc()
                log.warning("replica %s unreachable: %s", name, e)
        return versions

    def _holds(self, name: str, reported: int) -> bool:
        """Whether replica ``name``'s version is one this publisher pushed to it."""
        # (Acknowledged, or applied after the push's deadline: it holds that state.)
        return reported in (self._acked.get(name), self._tried.get(name))

    def _missed(self, name: str, reported: int, upto: int) -> list[ParameterDelta] | None:
        """The held deltas that bring replica ``name`` from ``reported`` to ``upto``, or None."""
        if not self._holds(name, reported) or not self._lineage <= reported <= upto:
            return None
        chain = [self._deltas.get(v) for v in range(reported + 1, upto + 1)]
        return None if None in chain else chain  # type: ignore[return-value]

    def _push(self, name: str, sink: DeltaSink, delta: ParameterDelta) -> None:
        """Push ``delta``; a failure is counted and logged (the next round sees where it is)."""
        kind = "full" if delta.full else "delta"
        t0 = time.perf_counter()
        try:
            acked = sink.push(delta)
        except (VersionGapError, StaleVersionError):
            # Moved between the probe and the push (restarted, or another
            # trainer pushed above): the next round sees its version and
            # resyncs it, above it if need be.
            self._acked.pop(name, None)
            self.metrics.pushes.labels(name, kind, "gap").inc()
            log.info("replica %s is out of step; it gets a full snapshot next round", name)
            return
        except SyncError as e:
            self.metrics.pushes.labels(name, kind, "error").inc()
            log.warning("push of version %d to %s failed: %s", delta.version, name, e)
            return
        # Acknowledged: from now on this replica is on this publisher's lineage.
        self._acked[name] = delta.version
        self.metrics.push_seconds.labels(kind).observe(time.perf_counter() - t0)
        self.metrics.pushes.labels(name, kind, "ok").inc()
        self.metrics.rows.labels(kind).inc(delta.num_rows())
        self.metrics.replica_version.labels(name).set(acked)

    def _changed(self, delta: ParameterDelta) -> bool:
        """Whether ``delta`` changes the state last published (rows, evicted ids or dense)."""
        published = self._published_dense
        if published is None:
            return True
        if not all(t.is_empty() for t in delta.tables):
            return True
        return not published.equals(delta.dense)

    def publish_once(self, *, wait_all: bool = False) -> int:
        """Publish the next version to every replica that answers; returns the version served.

        A version is made only when the parameters changed since the last one
        (or a replica holds a version this publisher cannot resend): while the
        trainer learns nothing, replicas keep their version, and one that is
        behind or empty gets what was last published, at its version.
        Waits for the pushes up to ``interval_s`` (``wait_all``: until each ends,
        within its sink's own deadline). A push still running goes on in the
        background, and its replica sits out the rounds until it ends.
        """
        with self._lock:
            reported = self._probe()
            version = self._version + 1
            ahead = max(reported.values(), default=0)
            # A replica at this version that did not get it from this
            # publisher holds another state under the same number: only a new
            # version can replace it.
            foreign = any(r == self._version and not self._holds(n, r)
                          for n, r in reported.items())
            resend: list[tuple[str, ParameterDelta]] | None = None
            with self.source.lock:  # one state for the delta and the snapshot
                delta = self.source.collect_delta(version)
                if ahead >= version or foreign or self._changed(delta):
                    if ahead >= version:
                        version = self._new_lineage(ahead)
                        delta = dataclasses.replace(delta, version=version,
                                                    base_version=version - 1)
                    catch_up = {n: chain for n, r in reported.items()
                                if (chain := self._missed(n, r, version - 1)) is not None}
                    behind = [n for n in reported if n not in catch_up]
                    snapshot = self.source.snapshot(version) if behind else None
                else:
                    resend = self._resend(reported)
            if resend is not None:  # (pushed with the trainer's lock released)
                futures = [self._submit(n, self._push, n, self.sinks[n], d) for n, d in resend]
                wait(futures, timeout=None if wait_all else self.interval_s)
                return self._version
            pushes = [self._submit(n, self._push, n, self.sinks[n],
                                   merge_deltas([*chain, delta]) if chain else delta)
                      for n, chain in catch_up.items()]
            pushes += [self._submit(n, self._push, n, self.sinks[n], snapshot) for n in behind]
            self._tried.update({n: version for n in (*catch_up, *behind)})
            self._in_step = set(catch_up)
            # Held for replicas that fall behind: the rows and evicted ids only
            # (a merged catch-up carries the newest dense weights).
            self._deltas[version] = dataclasses.replace(delta, dense=DenseParameters())
            self._deltas.pop(version - self.max_lag, None)
            self._published_dense = delta.dense
            wait(pushes, timeout=None if wait_all else self.interval_s)
            self._version = version
            self.metrics.version.set(version)
            return version

    def _new_lineage(self, ahead: int) -> int:
        """Start versions above ``ahead``, a replica's version at or above the next one."""
        log.warning("a replica is at version %d, ahead of this trainer's %d (restarted from an "
                    "older checkpoint?): publishing version %d to all",
                    ahead, self._version, ahead + 1)
        self._lineage = ahead + 1
        self._deltas.clear()
        self._acked.clear()
        self._tried.clear()
        return ahead + 1

    def _resend(self, reported: dict[str, int]) -> list[tuple[str, ParameterDelta]]:
        """Nothing changed: what brings replicas behind to the last version, unchanged.

        Called under the source's lock (a snapshot then is of that version's
        state). A replica at that version is left alone; one further behind
        gets the deltas it missed, or a snapshot.
        """
        version = self._version
        late = {n: r for n, r in reported.items() if r != version}
        catch_up = {n: chain for n, r in late.items()
                    if (chain := self._missed(n, r, version)) is not None}
        behind = [n for n in late if n not in catch_up]
        snapshot = self.source.snapshot(version) if behind else None
        # (The held deltas carry no dense weights: the last published ones go along.)
        pushes = [(n, dataclasses.replace(merge_deltas(chain),
                                          dense=self._published_dense or DenseParameters()))
                  for n, chain in catch_up.items() if chain]
        pushes += [(n, snapshot) for n in behind]  # type: ignore[misc]
        self._tried.update({n: version for n in late})
        return pushes

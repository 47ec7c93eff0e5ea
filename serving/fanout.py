"""The sync port of a multi-process replica: one push in, the same push to every worker.

The trainer sees one replica. :class:`FanOutSync` authenticates its push,
re-sends the chunks unchanged to each worker's private sync server and
answers with the version all of them hold (the minimum), or with the first
refusal: FAILED_PRECONDITION when a worker has a gap (a restarted one, say),
so the trainer resends a full snapshot, INVALID_ARGUMENT when the push does
not fit. A worker that holds the pushed version already (a snapshot resent
for another worker's gap) counts as holding it, not as refusing it.

:class:`CatchUpLog` keeps the last snapshot and the deltas applied on it, as
received, so a restarted worker replays them and catches up without waiting
for the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from prometheus_client import Counter

from streamrec.protos import sync_pb2, sync_pb2_grpc
from streamrec.serving.auth import authenticated, expected_header

__all__ = ["CatchUpLog", "FanOutSync", "PushTarget", "PUSH_RESULTS"]

log = logging.getLogger(__name__)

Chunks = Sequence[Any]  # the sync_pb2.ParameterChunk messages of one push
# The parent's answer to a push: applied by every live worker; refused as a
# gap or stale (FAILED_PRECONDITION), as malformed (INVALID_ARGUMENT); no
# worker up; a bad token.
PUSH_RESULTS = ("ok", "gap", "invalid", "unavailable", "unauthenticated")


class PushTarget(Protocol):
    """A live worker, as the fan-out sees it."""

    index: int
    stub: sync_pb2_grpc.ParameterSyncStub
    metadata: tuple[tuple[str, str], ...]


@dataclass
class CatchUpLog:
    """The last full snapshot and the deltas on top of it, in order, as pushed.

    Deltas are kept while they add up to at most the snapshot's size (or
    ``min_bytes``); past that the log is dropped until the next snapshot, and a
    restarted worker starts empty: its gap at the next push makes the trainer
    send one.
    """

    min_bytes: int = 64 << 20
    entries: list[Chunks] = field(default_factory=list)
    version: int = 0
    _bytes: int = 0
    _budget: int = 0

    def record(self, chunks: Chunks) -> None:
        """Note a push that workers applied."""
        head = chunks[0]
        size = sum(c.ByteSize() for c in chunks)
        if head.full:
            self.entries, self.version = [list(chunks)], head.version
            self._bytes, self._budget = size, max(size, self.min_bytes)
        elif self.entries and head.base_version == self.version:
            if self._bytes + size > 2 * self._budget:
                log.info("catch-up log over %d bytes: kept again from the next snapshot",
                         2 * self._budget)
                self.entries, self.version = [], 0
                return
            self.entries.append(list(chunks))
            self.version, self._bytes = head.version, self._bytes + size

    def replay(self, target: PushTarget, timeout_s: float) -> int:
        """Push every entry to ``target``; the version it then holds (0: none)."""
        version = 0
        for chunks in self.entries:
            ack = target.stub.Push(iter(chunks), metadata=target.metadata, timeout=timeout_s)
            version = int(ack.version)
        return version


@dataclass
class _Outcome:
    index: int
    version: int = 0
    code: grpc.StatusCode | None = None
    detail: str = ""


class FanOutSync(sync_pb2_grpc.ParameterSyncServicer):
    """The replica's sync service: pushes go to every worker that ``live()`` returns.

    ``lock`` serialises pushes with catch-up replays (a restarted worker must
    not take a delta before the log that precedes it).
    """

    def __init__(self, live: Callable[[], Sequence[PushTarget | None]], lock: Any,
                 catch_up: CatchUpLog, executor: Executor, token: str, pushes: Counter,
                 timeout_s: float = 60.0) -> None:
        self.live = live
        self.lock = lock
        self.catch_up = catch_up
        self.executor = executor
        self.expected = expected_header(token)
        self.pushes = pushes
        self.timeout_s = timeout_s

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if not authenticated(context, self.expected):
            self.pushes.labels("unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing sync token")

    def _push_one(self, target: PushTarget, chunks: Chunks) -> _Outcome:
        try:
            ack = target.stub.Push(iter(chunks), metadata=target.metadata,
                                   timeout=self.timeout_s)
            return _Outcome(target.index, version=int(ack.version))
        except grpc.RpcError as e:
            outcome = _Outcome(target.index, code=e.code(), detail=str(e.details()))
        if outcome.code == grpc.StatusCode.FAILED_PRECONDITION:
            held = self._version_of(target)
            # It holds this very version (a snapshot resent for another worker's
            # gap): applied, as far as the trainer is concerned. Newer is stale.
            if held == chunks[0].version:
                return _Outcome(target.index, version=held)
        return outcome

    def _version_of(self, target: PushTarget) -> int:
        try:
            reply = target.stub.GetVersion(sync_pb2.VersionRequest(), metadata=target.metadata,
                                           timeout=self.timeout_s)
        except grpc.RpcError:
            return 0
        return int(reply.version)

    def _fail(self, context: grpc.ServicerContext, result: str, code: grpc.StatusCode,
              message: str) -> None:
        self.pushes.labels(result).inc()
        context.abort(code, message)

    def Push(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        self._authenticate(context)
        chunks = list(request_iterator)
        if not chunks:
            self._fail(context, "invalid", grpc.StatusCode.INVALID_ARGUMENT,
                       "malformed push: empty push: no chunks")
        with self.lock:
            targets = [t for t in self.live() if t is not None]
            if not targets:
                self._fail(context, "unavailable", grpc.StatusCode.UNAVAILABLE,
                           "no serving worker is up (restarting); push again")
            outcomes = list(self.executor.map(lambda t: self._push_one(t, chunks), targets))
            applied = [o for o in outcomes if o.code is None]
            if applied:
                self.catch_up.record(chunks)
        refused = [o for o in outcomes if o.code is not None]
        for code, result in ((grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
                             (grpc.StatusCode.FAILED_PRECONDITION, "gap")):
            for o in refused:
                if o.code == code:
                    self._fail(context, result, code, f"worker {o.index}: {o.detail}")
        if not applied:
            o = refused[0]
            self._fail(context, "unavailable", grpc.StatusCode.UNAVAILABLE,
                       f"worker {o.index}: {o.code.name if o.code else ''}: {o.detail}")
        for o in refused:  # a worker that died meanwhile: restarted, it replays the log
            log.warning("push of version %d missed worker %d (%s: %s); it catches up on restart",
                        chunks[0].version, o.index, o.code.name if o.code else "", o.detail)
        self.pushes.labels("ok").inc()
        return sync_pb2.PushAck(version=min(o.version for o in applied))

    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The version every worker holds: the minimum (0 while one starts or is empty)."""
        self._authenticate(context)
        targets = list(self.live())
        if not targets or any(t is None for t in targets):
            return sync_pb2.VersionResponse(version=0)
        versions = self.executor.map(self._version_of, targets)  # type: ignore[arg-type]
        return sync_pb2.VersionResponse(version=min(versions))

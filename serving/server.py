"""The serving process: a public gRPC port (Predict, Recommend, health, reflection)
and a separate, token-authenticated sync port that receives parameter deltas.

``create_server`` builds both servers without starting them (port 0 picks a
free port, so tests bind any); ``serve`` runs them until SIGTERM/SIGINT, then
reports NOT_SERVING to health checks, goes on answering for
``serving.shutdown_delay_s`` (so load balancers stop sending traffic first),
and drains in-flight calls for ``serving.grace_s`` before exiting.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from operator import methodcaller
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry

from streamrec.protos import serving_pb2, serving_pb2_grpc, sync_pb2, sync_pb2_grpc
from streamrec.serving.admission import Admission, Shed
from streamrec.serving.auth import authenticated, expected_header
from streamrec.serving.health import HealthServicer
from streamrec.serving.ids import IdError, request_ids, scored_item
from streamrec.serving.metrics import METHODS
from streamrec.serving.replica import Features, ModelReplica, NonFiniteScoreError
from streamrec.serving.scoring import columns_of_rows
from streamrec.serving.undecodable import InvalidArgumentOnUndecodable
from streamrec.serving.workers import serve_workers
from streamrec.config import SYNC_MAX_MESSAGE_BYTES, AppConfig, ServingConfig
from streamrec.errors import NotReadyError, StaleVersionError, SyncError, VersionGapError
from streamrec.runtime import serve_metrics
from streamrec.model.delta import decode_chunks

__all__ = ["create_server", "serve", "Servers", "features_from_proto"]

log = logging.getLogger(__name__)

RECOMMENDER = serving_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
T = TypeVar("T")


class _InvalidRequest(ValueError):
    pass


class _Late(Exception):
    """A request scored after its deadline had passed."""


def features_from_proto(features: Any) -> dict[str, tuple[Any, ...]]:
    """``map<string, FeatureValues>`` -> ``{name: (values...)}``; rejects non-finite numbers."""
    # Runs once per candidate (thousands per request): each repeated field is
    # read once, and the wire types already are str, int and float.
    out: dict[str, tuple[Any, ...]] = {}
    for name, fv in features.items():
        if not name:
            raise _InvalidRequest("feature with an empty name")
        numbers = fv.numbers
        if numbers and not all(map(math.isfinite, numbers)):
            raise _InvalidRequest(f"feature {name!r}: numbers must be finite")
        out[name] = (*fv.strings, *fv.ids, *numbers)
    return out


def columns_from_proto(columns: Any, candidates: int, positions: Sequence[int]
                       ) -> dict[str, list[Any]]:
    """``map<string, FeatureColumn>`` -> ``{name: [value of each candidate at positions]}``.

    Each column holds exactly one of strings, ids or numbers, with one value
    per candidate (``candidates`` of them); numbers must be finite.
    """
    out: dict[str, list[Any]] = {}
    for name, column in columns.items():
        if not name:
            raise _InvalidRequest("candidate column with an empty name")
        filled = [v for v in (column.strings, column.ids, column.numbers) if len(v)]
        if len(filled) != 1 or len(filled[0]) != candidates:
            raise _InvalidRequest(
                f"candidate column {name!r}: send one value per item_id ({candidates}) in "
                f"exactly one of strings, ids, numbers")
        values = list(filled[0])
        if len(column.numbers) and not all(map(math.isfinite, values)):
            raise _InvalidRequest(f"candidate column {name!r}: numbers must be finite")
        # (Positions are first occurrences in order: as many as candidates is all of them.)
        out[name] = values if len(positions) == candidates else [values[i] for i in positions]
    return out


class _FeatureRules:
    """The model's feature names and types, which request features must follow.

    As for events (``ingest.schema``): a dense feature takes numbers (ids or
    numbers, not strings) and an id feature strings or ids (not numbers), or
    the request is refused naming it. A name the model does not read is
    ignored (clients may send more than one model reads), and counted.
    """

    def __init__(self, ids: frozenset[str], dense: frozenset[str]) -> None:
        self.ids, self.dense, self.known = ids, dense, ids | dense

    def check(self, rows: Sequence[Features], where: Callable[[int], str]) -> list[str]:
        """Refuse a mistyped known feature of any of ``rows``; the names none of them may use.

        Column-wise passes that run in C (a request may hold thousands of
        rows); ``where(i)`` names row i in the error.
        """
        names = set(chain.from_iterable(rows))
        for known, bad, rule in ((self.dense, str, "is dense: send numbers (numbers or ids), "
                                  "not strings"),
                                 (self.ids, float, "is an id feature: send strings or ids, "
                                  "not numbers")):
            for name in known & names:
                if bad in map(type, chain.from_iterable(map(methodcaller("get", name, ()),
                                                            rows))):
                    row = next(i for i, r in enumerate(rows) if bad in map(type, r.get(name, ())))
                    raise _InvalidRequest(f"{where(row)}: feature {name!r} {rule}")
        return sorted(names - self.known)

    def check_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[str]:
        """:meth:`check` for candidate columns (each holds values of one type)."""
        for name, values in columns.items():
            kind = type(values[0]) if values else None
            if name in self.dense and kind is str:
                raise _InvalidRequest(f"candidate_columns: feature {name!r} is dense: send "
                                      f"numbers (numbers or ids), not strings")
            if name in self.ids and kind is float:
                raise _InvalidRequest(f"candidate_columns: feature {name!r} is an id feature: "
                                      f"send strings or ids, not numbers")
        return sorted(columns.keys() - self.known)


def _expanded_ids(shared: Features, own: Sequence[Features] | None, candidates: int,
                  columns: Sequence[str] = ()) -> int:
    """Feature values the scored rows will hold.

    Every candidate's row gets a copy of the request-level (``shared``)
    features plus its own (``own[i]``), which replace shared ones of the same
    name; every value counts, id, string or number. Counted on the decoded
    request (its size is bounded by ``serving.max_request_bytes``) before the
    rows, which multiply the shared features, are built. ``columns`` names
    the candidate columns, which give every candidate one value each: counted
    per column, not per candidate (``own`` is then not read).
    """
    # A name counts as one value at least: names with empty value lists are
    # copied into every row too.
    counts = {name: max(1, len(values)) for name, values in shared.items()}
    total = candidates * sum(counts.values())
    if columns:
        return total + candidates * sum(1 - counts.get(name, 0) for name in columns)
    for features in own or ():
        total += sum(max(1, len(v)) - counts.get(name, 0) for name, v in features.items())
    return total


def _first_occurrences(items: Sequence[int]) -> list[int]:
    """Positions of the first occurrence of each distinct item, in request order."""
    first: dict[int, int] = {}
    for position, item in enumerate(items):
        first.setdefault(item, position)
    return list(first.values())


class _Recommender(serving_pb2_grpc.RecommenderServicer):
    def __init__(self, replica: ModelReplica, config: ServingConfig) -> None:
        self.replica = replica
        self.config = config
        self.metrics = replica.metrics
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self._logged_names: set[str] = set()

    def _ignored(self, method: str, names: list[str]) -> None:
        """Count a request carrying features the model does not read; log each new name once."""
        self.metrics.ignored_features.labels(method).inc()
        new = sorted(set(names) - self._logged_names)
        if new and len(self._logged_names) < 1000:
            self._logged_names.update(new)
            log.warning("%s: ignoring features the model does not read: %s (a client's typo, "
                        "or a feature the model is trained without)", method, new[:20])

    def _score(self, request: Any, method: str, distinct: bool = False
               ) -> tuple[Sequence[int | str], list[float], int]:
        """``(items, scores, version)`` of the request's candidates, validated first.

        ``items`` are named as the request sent them (integer ids or string keys).

        ``distinct`` scores each item once, at its first occurrence (with that
        position's ``candidate_features``), for Recommend; otherwise every
        position is scored, as Predict answers one score per position.
        """
        try:
            ids = request_ids(request, self.config.max_candidates)
        except IdError as e:
            raise _InvalidRequest(str(e)) from None
        items = ids.items
        if not items:
            raise _InvalidRequest("item_ids is empty: send at least one candidate")
        if len(items) > self.config.max_candidates:
            raise _InvalidRequest(f"{len(items)} candidates, over the limit of "
                                  f"{self.config.max_candidates} (serving.max_candidates)")
        candidates, columns = request.candidate_features, request.candidate_columns
        if len(candidates) and len(columns):
            raise _InvalidRequest("send candidate_features or candidate_columns, not both")
        if len(candidates) and len(candidates) != len(items):
            raise _InvalidRequest(f"{len(candidates)} candidate_features "
                                  f"for {len(items)} item_ids: send none or one per item")
        positions: Sequence[int] = _first_occurrences(items) if distinct else range(len(items))
        shared = features_from_proto(request.features)
        per_item: list[dict[str, tuple[Any, ...]]] | None = None
        own_columns: dict[str, list[Any]] | None = {}
        if len(candidates):
            per_item = [features_from_proto(candidates[i].features) for i in positions]
        elif len(columns):
            own_columns = columns_from_proto(columns, len(items), positions)
        kinds = self.replica.feature_kinds()
        if kinds is not None:  # (none: predict answers FAILED_PRECONDITION)
            rules = _FeatureRules(*kinds)
            ignored = rules.check([shared], lambda _: "features")
            if per_item:
                ignored += rules.check(per_item, lambda i: f"candidate_features[{positions[i]}]")
            ignored += rules.check_columns(own_columns or {})
            if ignored:
                self._ignored(method, ignored)
        # Before the rows are built: a small request can expand to a huge batch.
        total = _expanded_ids(shared, per_item, len(positions), tuple(columns))
        if total > self.config.max_request_ids:
            raise _InvalidRequest(
                f"{len(positions)} candidates with their shared and own features make "
                f"{total:,} feature ids, over the limit of {self.config.max_request_ids:,} "
                f"(serving.max_request_ids); request-level features are copied into every "
                f"candidate's row")
        items = [items[i] for i in positions]
        self.metrics.candidates.observe(len(items))
        if per_item is not None:  # (the common form: one value of the same features each)
            own_columns = columns_of_rows(per_item)
        if own_columns is not None:
            scores, version = self.replica.predict_columns(ids.user, items, shared, own_columns)
        else:
            scores, version = self.replica.predict(ids.user, items, shared, per_item)
        return [ids.sent[i] for i in positions] if distinct else ids.sent, scores, version

    def _call(self, method: str, context: grpc.ServicerContext, body: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        code = "OK"
        self.metrics.in_flight.inc()
        try:
            with self.admission.slot(context):
                response = body()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise _Late()
            return response
        except _Late:
            # The caller has stopped waiting: say so, rather than count it served.
            code = "DEADLINE_EXCEEDED"
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "scored after the deadline had passed; not answered")
        except Shed as e:
            code = e.code.name
            self.metrics.shed.labels(method, e.reason).inc()
            context.abort(e.code, str(e))
        except _InvalidRequest as e:
            code = "INVALID_ARGUMENT"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except NotReadyError as e:
            code = "FAILED_PRECONDITION"
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except NonFiniteScoreError as e:
            code = "INTERNAL"
            log.error("%s: %s", method, e)
            context.abort(grpc.StatusCode.INTERNAL, str(e))
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method} failed; see the server log")
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(method, code).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - t0)
        raise AssertionError("unreachable: context.abort raises")

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            _, scores, version = self._score(request, "Predict")
            return serving_pb2.PredictResponse(scores=scores, model_version=version)
        return self._call("Predict", context, body)

    def Recommend(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            # A duplicated candidate is ranked once, or it could fill the top k.
            items, scores, version = self._score(request, "Recommend", distinct=True)
            ranked = sorted(zip(items, scores), key=lambda p: -p[1])
            k = request.k or len(ranked)
            return serving_pb2.RecommendResponse(
                items=[scored_item(i, s) for i, s in ranked[:k]],
                model_version=version)
        return self._call("Recommend", context, body)


class _ParameterSync(sync_pb2_grpc.ParameterSyncServicer):
    def __init__(self, replica: ModelReplica, token: str,
                 on_version: Callable[[int], None]) -> None:
        self.replica = replica
        self.expected = expected_header(token)
        self.on_version = on_version

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if not authenticated(context, self.expected):
            self.replica.metrics.deltas.labels("delta", "unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing sync token")

    def Push(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        self._authenticate(context)
        try:
            delta = decode_chunks(request_iterator)
        except SyncError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed push: {e}")
        try:
            self.replica.apply(delta)
        except (VersionGapError, StaleVersionError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except SyncError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.on_version(self.replica.version)
        return sync_pb2.PushAck(version=self.replica.version)

    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._authenticate(context)
        return sync_pb2.VersionResponse(version=self.replica.version)


@dataclass
class Servers:
    """The public and sync servers of one replica, with their bound ports."""

    public: grpc.Server
    sync: grpc.Server
    health: HealthServicer
    port: int
    sync_port: int

    def start(self) -> None:
        self.public.start()
        self.sync.start()

    def set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(RECOMMENDER, status)

    def stop(self, grace: float | None = None, delay: float = 0.0) -> None:
        """Shut down: report NOT_SERVING, keep serving ``delay`` s, then drain ``grace`` s.

        Every health status ("" and the Recommender) turns NOT_SERVING at once
        and for good (a delta arriving meanwhile does not make it ready again),
        while both servers go on answering for ``delay`` seconds, so load
        balancers and readiness probes take the replica out before calls are
        refused. Then both servers stop accepting calls and in-flight ones
        get ``grace`` seconds to finish (None: wait for them).
        """
        self.health.enter_graceful_shutdown()
        if delay > 0:
            time.sleep(delay)
        done = [self.public.stop(grace), self.sync.stop(grace)]
        for event in done:
            event.wait()

    def wait(self) -> None:
        self.public.wait_for_termination()


# gRPC binds with SO_REUSEPORT by default: a second replica started on the
# same ports would bind them too, silently, and the kernel would split
# connections between the two processes. Without it, the second bind fails.
_NO_REUSEPORT = ("grpc.so_reuseport", 0)


def _bind(server: grpc.Server, name: str, host: str, port: int) -> int:
    """Bind ``server`` to ``host:port``; the port bound, or OSError naming the address."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # what grpcio raises when the bind fails (older versions return 0)
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {name} port {host}:{port} (in use, or not a local address)")
    return bound


def create_server(config: ServingConfig, replica: ModelReplica,
                  registry: CollectorRegistry | None = None, share_port: bool = False
                  ) -> Servers:
    """Build (not start) the public and sync servers; ports 0 pick free ports.

    ``share_port`` binds the public port with SO_REUSEPORT, for worker
    processes of one replica that all listen on it (serving/workers.py).
    """
    del registry  # the replica's metrics are already registered where it was built

    def count_undecodable(method: str) -> None:
        name = method.rpartition("/")[2]
        if name in METHODS:
            replica.metrics.requests.labels(name, "INVALID_ARGUMENT").inc()

    public = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                    thread_name_prefix="serving"),
                         maximum_concurrent_rpcs=config.max_workers,
                         options=[("grpc.max_receive_message_length", config.max_request_bytes),
                                  ("grpc.so_reuseport", 1) if share_port else _NO_REUSEPORT],
                         interceptors=[InvalidArgumentOnUndecodable(count_undecodable)])
    health_servicer = HealthServicer()
    serving_pb2_grpc.add_RecommenderServicer_to_server(_Recommender(replica, config), public)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, public)
    reflection.enable_server_reflection(
        (RECOMMENDER, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), public)
    port = _bind(public, "serving", config.host, config.port)
    sync = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sync"),
                       options=[("grpc.max_receive_message_length", SYNC_MAX_MESSAGE_BYTES),
                                _NO_REUSEPORT],
                       interceptors=[InvalidArgumentOnUndecodable()])
    servers: Servers | None = None

    def on_version(version: int) -> None:
        if servers is not None and version > 0:
            servers.set_ready(True)

    sync_pb2_grpc.add_ParameterSyncServicer_to_server(
        _ParameterSync(replica, config.token, on_version), sync)
    try:
        sync_port = _bind(sync, "sync", config.sync_host, config.sync_port)
    except OSError:
        public.stop(None)  # release the serving port bound above
        raise
    # Liveness ("") is SERVING once the process is up; the Recommender
    # service itself reports SERVING only once a model has arrived (readiness).
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servers = Servers(public, sync, health_servicer, port, sync_port)
    servers.set_ready(replica.ready)
    return servers


def serve(config: AppConfig, stop: threading.Event | None = None) -> None:
    """Run one replica until SIGTERM/SIGINT (or ``stop``), then shut down gracefully.

    With ``serving.workers`` other than 1 the replica runs as worker processes
    (serving/workers.py); with 1, in this process.
    """
    if config.serving.worker_count() > 1:
        serve_workers(config, stop)
        return
    stop = stop or threading.Event()
    if not config.serving.token:
        log.warning("serving.token is empty: the sync port accepts parameters from anyone")
    replica = ModelReplica(registry=REGISTRY)
    servers = create_server(config.serving, replica, registry=REGISTRY)
    if config.metrics.port >= 0:
        port = serve_metrics(config.metrics.host, config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    servers.start()
    log.info("serving on %s:%d, sync on %s:%d", config.serving.host, servers.port,
             config.serving.sync_host, servers.sync_port)
    stop.wait()
    log.info("shutting down: NOT_SERVING for %.1f s, then grace %.1f s",
             config.serving.shutdown_delay_s, config.serving.grace_s)
    servers.stop(config.serving.grace_s, config.serving.shutdown_delay_s)

"""A serving replica of the trainer's parameters, updated by versioned deltas.

The replica scores with the trainer's own code — the same batching, pooling,
pruning mask, history features and DeepFM module — over its own copy of the
tables (:class:`ReplicaTableGroup`: tables of one row width in one id -> row
map, with no filter, expiry or optimizer state). So a replica at version v
scores exactly as the trainer did when it exported v.

Atomicity: ``apply`` takes a writer lock and ``predict`` a reader lock, so a
request sees version v or v + 1, never a mix. A full snapshot builds a fresh
state off to the side and swaps it in; a delta mutates in place under the
writer lock, which costs O(rows in the delta), not O(table) as copy-on-write
would. What only reads is done before the writer lock, while requests are
scored: checking the delta and looking up its ids (one delta is applied at a
time, so no other writer moves the tables meanwhile); under the lock, evicted
ids are removed, new ids get rows and the rows are written. Readers run
concurrently with each other.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import FeatureValue
from streamrec.serving.metrics import ServingMetrics
from streamrec.serving.scoring import CandidateColumns, Columns, score_columns
from streamrec.errors import NonFiniteError, NotReadyError, StaleVersionError, SyncError, \
    VersionGapError
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.history import HistoryFeatures, history_table_name
from streamrec.model.wide import WideTerms, parse_terms, wide_table_name
from streamrec.model.ctr import CTRModel, model_from_spec, spec_feature_tables
from streamrec.model.delta import DenseParameters, ParameterDelta
from streamrec.model.records import TableDelta
from streamrec.model.tables.index import IdIndex
from streamrec.model.tables.store import tagged

__all__ = ["ModelReplica", "ReplicaTableGroup", "NonFiniteScoreError"]

Features = Mapping[str, Sequence[FeatureValue]]


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Prepared(NamedTuple):
    """One group's part of a delta, looked up before the writer lock."""

    gone: tuple[torch.Tensor, torch.Tensor] | None  # evicted (ids, tags)
    ids: torch.Tensor  # upserted ids
    tags: torch.Tensor  # their tags
    rows: torch.Tensor  # their rows when looked up (-1: absent, or evicted in this delta)
    values: torch.Tensor


class ReplicaTableGroup:
    """Serving tables of one row width in one tagged id index and one weight
    tensor, looked up together (``lookup(tags, ids)``) as the trainer's fused
    stores are: the embedding tables, the history tables, the wide terms' tables,
    one lookup each for all their keys. ``tables`` are the members, one per
    name. Delta rows ``whole_dim`` wide are taken too, keeping their first
    ``dim`` columns.
    """

    def __init__(self, names: Sequence[str], dim: int, whole_dim: int | None = None) -> None:
        self.names = list(names)
        self.dim = dim
        self.whole_dim = whole_dim or dim
        self.index = IdIndex(tagged=True)
        self.weights = torch.zeros((0, dim))
        self.rows_per_tag = [0] * len(self.names)
        self.tables = {name: _GroupMember(self, name, tag) for tag, name in enumerate(names)}

    def lookup(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = False) -> torch.Tensor:
        return self.index.lookup(ids, tags)

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        return _read(self.weights, row_ids, self.dim)

    def takes(self, dim: int) -> bool:
        """Whether a member takes delta rows ``dim`` wide."""
        return dim in (self.dim, self.whole_dim)

    def prepare(self, parts: Sequence[TableDelta]) -> _Prepared:
        """The members' parts of one delta, keyed and looked up: read-only, so it runs
        while requests are scored (one applier at a time: see ModelReplica)."""
        tags = [self.tables[t.table].tag for t in parts]
        evicted = [(t.evicted.ids, tag) for t, tag in zip(parts, tags) if len(t.evicted)]
        upserted = [(t.upserted, tag) for t, tag in zip(parts, tags) if len(t.upserted)]
        gone = tagged(evicted) if evicted else None
        ids, id_tags = tagged([(r.ids, tag) for r, tag in upserted]) if upserted else \
            (torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))
        rows = self.index.lookup(ids, id_tags)
        if gone is not None:  # an id evicted and upserted in one delta is found again after
            rows[torch.isin(ids, gone[0])] = -1
        values = torch.cat([r.values[:, :self.dim] for r, _ in upserted]) if upserted else \
            torch.empty((0, self.dim))
        return _Prepared(gone, ids, id_tags, rows, values)

    def commit(self, prepared: _Prepared) -> None:
        """Apply a delta part from :meth:`prepare` (readers held back): evicted ids first,
        then the ids not found get rows, then every row its values."""
        if prepared.gone is not None:
            ids, id_tags = prepared.gone
            rows = self.index.lookup(ids, id_tags)
            present = rows >= 0  # (an id may be evicted twice in one delta: counted once)
            freed, first = torch.unique(rows[present], return_inverse=True)
            self._count(torch.zeros_like(freed).index_copy_(0, first, id_tags[present]), -1)
            self.index.remove(ids, id_tags)
        rows = prepared.rows
        missing = torch.nonzero(rows < 0).reshape(-1)
        if missing.numel():
            rows = rows.clone()
            found, new = self.index.lookup_or_insert(prepared.ids.index_select(0, missing),
                                                     tags=prepared.tags.index_select(0, missing))
            rows[missing] = found
            self._count(prepared.tags.index_select(0, missing)[new], 1)
        if rows.numel():
            self.weights = _grown(self.weights, self.index.row_capacity)
            self.weights[rows] = prepared.values

    def _count(self, tags: torch.Tensor, sign: int) -> None:
        for tag, n in enumerate(torch.bincount(tags, minlength=len(self.names)).tolist()):
            self.rows_per_tag[tag] += sign * n

    def memory_bytes(self) -> int:
        return self.weights.numel() * 4 + self.index.memory_bytes()


class _GroupMember:
    """One table of a :class:`ReplicaTableGroup`: its deltas, its row count."""

    def __init__(self, group: ReplicaTableGroup, name: str, tag: int) -> None:
        self.name, self.dim, self.tag, self.store = name, group.dim, tag, group

    def __len__(self) -> int:
        return self.store.rows_per_tag[self.tag]

    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None, now_ms: int = 0,
               train: bool = False) -> torch.Tensor:
        return self.store.lookup(torch.full_like(ids, self.tag), ids)

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        return self.store.read(row_ids)

    def memory_bytes(self) -> int:
        """Its share of the group's bytes, by rows held."""
        total = sum(self.store.rows_per_tag)
        return self.store.memory_bytes() * len(self) // total if total else 0


def _grown(weights: torch.Tensor, capacity: int) -> torch.Tensor:
    """``weights`` with room for ``capacity`` rows (doubling), new rows zero."""
    if capacity <= weights.shape[0]:
        return weights
    grown = torch.zeros((max(capacity, 2 * weights.shape[0]), weights.shape[1]))
    grown[: weights.shape[0]] = weights
    return grown


def _read(weights: torch.Tensor, row_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows of ``row_ids`` (zeros for -1)."""
    if weights.shape[0] == 0:  # no row synced yet: every id reads as zeros
        return torch.zeros((row_ids.numel(), dim))
    out = weights[row_ids.clamp(min=0)]
    out[row_ids < 0] = 0.0
    return out


class _State:
    """Everything one model version scores with."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.model: CTRModel = model_from_spec(spec)
        self.model.eval()
        cfg = self.model.config
        self.batcher = Batcher(cfg.sparse_features, cfg.dense_features)
        self.features = frozenset([*cfg.sparse_features, *cfg.dense_features])
        feature_tables = spec_feature_tables(spec)
        embedding_tables = ReplicaTableGroup(list(dict.fromkeys(feature_tables.values())),
                                             self.model.row_dim).tables
        history = ReplicaTableGroup([history_table_name(f) for f in cfg.history_features],
                                    2).tables
        terms = parse_terms(cfg.wide_terms)
        # A wide row's weight alone (TrainerParameters sends no Adagrad sum; a
        # trainer of the release before sent both: whole rows are taken too).
        wide = ReplicaTableGroup([wide_table_name(t) for t in terms], 1, whole_dim=2).tables
        self.tables: dict[str, _GroupMember] = {**embedding_tables, **history, **wide}
        self.embeddings = DynamicEmbeddingCollection(
            embedding_tables, features=feature_tables)  # type: ignore[arg-type]
        self.history = HistoryFeatures(cfg.history_features, history,  # type: ignore[arg-type]
                                       cap=cfg.history_cap, strength=cfg.history_strength)
        self.wide = WideTerms(terms, wide)  # type: ignore[arg-type]
        self.version = 0
        self.event_time_ms = 0
        self.exported_at_ms = 0

    def check(self, delta: ParameterDelta) -> None:
        """Raise SyncError if ``delta`` does not fit this state, before anything changes.

        A rejected delta must leave the version served intact: applying half
        of one would score requests with a mix of two versions. Non-finite
        values (NonFiniteError) are refused too: one NaN row scores NaN for
        every request that reads it.
        """
        dense = delta.dense
        for name, tensor in [*dense.weights.items(), *dense.prune_thresholds.items()]:
            if not bool(torch.isfinite(tensor).all()):
                raise NonFiniteError(f"dense {name!r} holds NaN or infinite values")
        for t in delta.tables:
            values = t.upserted.values
            if values.numel() and not bool(torch.isfinite(values).all()):
                raise NonFiniteError(f"table {t.table!r} has rows with NaN or infinite values")
        if not dense.is_empty():
            want = {k: v.shape for k, v in self.model.state_dict().items()}
            got = {k: v.shape for k, v in dense.weights.items()}
            if want != got:
                wrong = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
                raise SyncError(f"dense weights do not fit the model spec: {wrong[:5]}")
            for name, v in dense.prune_thresholds.items():
                if name not in self.embeddings.tables:
                    raise SyncError(f"{name}: a threshold for a table the model does not have")
                if v.numel() != 1:
                    raise SyncError(f"{name}: a threshold is one value, got shape "
                                    f"{tuple(v.shape)}")
        for t in delta.tables:
            table = self.tables.get(t.table)
            if table is None or not table.store.takes(t.dim):
                raise SyncError(f"delta for unknown table {t.table!r} (dim {t.dim})")

    def set_dense(self, dense: DenseParameters) -> None:
        try:
            self.model.load_state_dict(dict(dense.weights))
        except RuntimeError as e:
            raise SyncError(f"dense weights do not fit the model spec: {e}") from e
        thresholds = dense.prune_thresholds
        if set(thresholds) != set(self.embeddings.prune_alpha):
            # The pruned tables are fixed by the trainer's config; rebuild
            # the collection's mask for them (alpha only matters in training).
            self.embeddings = DynamicEmbeddingCollection(
                self.embeddings.tables, {t: 1.0 for t in thresholds},
                features=self.embeddings.table_of)
        self.embeddings.set_thresholds(thresholds)

    def prepare_tables(self, delta: ParameterDelta
                       ) -> list[tuple[ReplicaTableGroup, _Prepared]]:
        """The delta's rows (checked by :meth:`check`) looked up per group, a group's
        members together: read-only, while requests are scored."""
        groups: dict[int, tuple[ReplicaTableGroup, list[TableDelta]]] = {}
        for t in delta.tables:
            store = self.tables[t.table].store
            groups.setdefault(id(store), (store, []))[1].append(t)
        return [(group, group.prepare(parts)) for group, parts in groups.values()]

    @staticmethod
    def commit_tables(prepared: list[tuple[ReplicaTableGroup, _Prepared]]) -> None:
        for group, part in prepared:
            group.commit(part)

    def apply_tables(self, delta: ParameterDelta) -> None:
        self.commit_tables(self.prepare_tables(delta))

    @torch.no_grad()
    def score(self, rows: list[tuple[int, int, Features | None]]) -> torch.Tensor:
        batch = self.batcher.build_rows(rows)  # type: ignore[arg-type]
        pooled = self.embeddings.forward(batch.sparse, self.event_time_ms, train=False)
        history = self.history.counts(batch.sparse, None, self.event_time_ms)
        logits = self.model(pooled, batch.dense, history)
        if self.wide.terms:
            logits = logits + self.wide.logits(batch.sparse, self.event_time_ms)
        return torch.sigmoid(logits)


class NonFiniteScoreError(NonFiniteError):
    """The model scored some candidates NaN (finite parameters that overflow): none is served."""


class ModelReplica:
    """Holds one model version; ``apply`` moves it forward, ``predict`` scores with it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = _ReadWriteLock()
        self._applying = threading.Lock()
        self._state: _State | None = None
        self.metrics = ServingMetrics(self, registry)

    @property
    def version(self) -> int:
        state = self._state
        return state.version if state is not None else 0

    @property
    def ready(self) -> bool:
        return self._state is not None

    def feature_kinds(self) -> tuple[frozenset[str], frozenset[str]] | None:
        """The served model's ``(id features, dense features)``; None before any model."""
        state = self._state
        if state is None:
            return None
        cfg = state.model.config
        return frozenset(cfg.sparse_features), frozenset(cfg.dense_features)

    def table_rows(self) -> dict[str, int]:
        state = self._state
        return {n: len(t) for n, t in state.tables.items()} if state is not None else {}

    def learned_event_time_ms(self) -> int:
        """Event time of the newest examples the model served has learned (0 before any)."""
        state = self._state
        return state.event_time_ms if state is not None else 0

    def staleness_seconds(self) -> float:
        """Wall seconds since the event time the served model has learned up to (NaN before any).

        It grows while nothing new is learned or delivered (a stalled trainer,
        failing pushes), whatever the versions do.
        """
        learned = self.learned_event_time_ms()
        if not learned:
            return math.nan
        return max(0.0, time.time() - learned / 1000)

    def apply(self, delta: ParameterDelta) -> None:
        """Move to ``delta.version``, atomically, or change nothing and raise.

        Raises VersionGapError if a delta does not follow on the version held,
        StaleVersionError if ``delta.version`` is not above it (a replica never
        goes back; an empty one takes any snapshot), NonFiniteError if any
        parameter is NaN or infinite, SyncError if it does not fit the model.
        """
        kind = "full" if delta.full else "delta"
        try:
            self._apply(delta)
        except StaleVersionError:
            self.metrics.deltas.labels(kind, "stale").inc()
            raise
        except NonFiniteError:
            self.metrics.deltas.labels(kind, "non_finite").inc()
            raise
        except SyncError:
            # An empty replica (just restarted) reports a gap too: the resync
            # after a restart is expected, not an error.
            self.metrics.deltas.labels(kind, "gap" if not delta.full
                                       and delta.base_version != self.version else "error").inc()
            raise
        self.metrics.deltas.labels(kind, "ok").inc()

    def _apply(self, delta: ParameterDelta) -> None:
        with self._applying:  # one delta or snapshot at a time
            self._apply_one(delta)

    def _apply_one(self, delta: ParameterDelta) -> None:
        if delta.version <= 0:
            raise SyncError(f"version {delta.version}: versions start at 1")
        if delta.full:
            if self._state is not None and delta.version <= self._state.version:
                raise StaleVersionError(self._state.version, delta.version)
            if not delta.model_spec:
                raise SyncError("full snapshot without a model spec")
            try:
                state = _State(delta.model_spec)
            except (ValueError, TypeError, KeyError) as e:
                raise SyncError(f"bad model spec: {e}") from e
            state.check(delta)
            state.set_dense(delta.dense)
            state.apply_tables(delta)
            self._stamp(state, delta)
            self._lock.acquire_write()
            try:
                self._state = state
            finally:
                self._lock.release_write()
            return
        # Only an applier changes the state and its tables, one at a time
        # (self._applying): the versions, the check (the delta and the model
        # spec's shapes) and the lookups of the delta's ids are read before the
        # writer lock, which holds every request back.
        state = self._state
        if state is None or delta.base_version != state.version:
            raise VersionGapError(self.version, delta.base_version)
        if delta.version <= state.version:
            raise StaleVersionError(state.version, delta.version)
        state.check(delta)
        prepared = state.prepare_tables(delta)
        self._lock.acquire_write()
        try:
            if not delta.dense.is_empty():
                state.set_dense(delta.dense)
            state.commit_tables(prepared)
            self._stamp(state, delta)
        finally:
            self._lock.release_write()

    @staticmethod
    def _stamp(state: _State, delta: ParameterDelta) -> None:
        state.version = delta.version
        state.event_time_ms = max(state.event_time_ms, delta.event_time_ms)
        state.exported_at_ms = delta.exported_at_ms

    def score_rows(self, rows: Sequence[tuple[int, int, Features | None]]
                   ) -> tuple[list[float], int]:
        """Click probabilities of arbitrary ``(user_id, item_id, features)`` rows, in one batch."""
        with self._reading() as state:
            return self._finite(state.score(list(rows)), state.version), state.version

    def _finite(self, scores: torch.Tensor, version: int) -> list[float]:
        """``scores`` as a list; NonFiniteScoreError (counted) if any is NaN or infinite."""
        bad = int((~torch.isfinite(scores)).sum())
        if bad:
            self.metrics.non_finite_scores.inc(bad)
            raise NonFiniteScoreError(
                f"model version {version} scored {bad} of {scores.numel()} candidates NaN or "
                f"infinite; none is served (its parameters overflow: check the trainer)")
        return scores.tolist()  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[_State]:
        """The model state, held against deltas while the block runs (NotReadyError: none yet)."""
        self._lock.acquire_read()
        try:
            state = self._state
            if state is None:
                raise NotReadyError("no model yet: the replica has not received parameters")
            yield state
        finally:
            self._lock.release_read()

    def predict(self, user_id: int, item_ids: Sequence[int], features: Features | None = None,
                candidate_features: Sequence[Features] | None = None) -> tuple[list[float], int]:
        """Click probability of each candidate for ``user_id``, and the version that scored them.

        ``features`` are the request's (user/context) features, shared by all
        candidates; ``candidate_features[i]`` adds item i's own. The batch
        scored holds the shared ids once per candidate, so callers bound the
        total (the server refuses requests over ``serving.max_request_ids``).
        Raises :class:`NotReadyError` before the first model arrives.
        """
        if candidate_features and len(candidate_features) != len(item_ids):
            raise ValueError(f"{len(candidate_features)} candidate_features for "
                             f"{len(item_ids)} item_ids")
        with self._reading() as state:
            # Only the features this model reads are copied into every
            # candidate's row: a request may name thousands of others.
            used = state.features
            shared = {k: v for k, v in (features or {}).items() if k in used}
            rows: list[tuple[int, int, Features | None]] = []
            for i, item in enumerate(item_ids):
                own = candidate_features[i] if candidate_features else None
                if own:
                    own = {k: v for k, v in own.items() if k in used}
                # (A merged copy per candidate: the batcher reads each row's
                # features once per feature, which a ChainMap view makes ~5x
                # slower; serving.max_request_ids bounds what the copies hold.)
                rows.append((int(user_id), int(item), {**shared, **own} if own else shared))
            return self._finite(state.score(rows), state.version), state.version

    def predict_columns(self, user_id: int, item_ids: Sequence[int],
                        features: Features | None = None, candidate_columns: Columns | None = None
                        ) -> tuple[list[float], int]:
        """:meth:`predict` with the candidates' features as columns (one value per item).

        The request's features are looked up once for all candidates
        (serving/scoring.py); a column replaces a request feature of its name.
        Raises ValueError for a column whose length is not ``len(item_ids)``.
        """
        request = CandidateColumns(int(user_id), item_ids, features or {},
                                   candidate_columns or {})
        with self._reading() as state:
            return self._finite(score_columns(state, request), state.version), state.version

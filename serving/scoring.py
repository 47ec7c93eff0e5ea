"""Columnar scoring of one request's candidates against a replica's model version.

The request's own features (the user's id and the request-level features) are
looked up once and broadcast to every candidate; the candidates' features come
as columns, one value per candidate, looked up in one call per table. The
model gets the inputs of the reference path (``_State.score`` over one row per
candidate), the same values to the bit (tests/unit/test_columnar_scoring.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

from streamrec.ingest.batch import Batcher, dense_column
from streamrec.ingest.event import FeatureValue
from streamrec.model.ctr import spec_feature_tables
from streamrec.model.history import history_table_name
from streamrec.model.tables.store import tagged
from streamrec.model.wide import cross_keys

__all__ = ["Columns", "CandidateColumns", "columns_of_rows", "score_columns"]

# Feature name -> one value per candidate.
Columns = Mapping[str, Sequence[FeatureValue]]


@dataclass(frozen=True)
class CandidateColumns:
    """One request's candidates, columnar: ``items`` ids and their feature ``columns``."""

    user: int
    items: Sequence[int]
    shared: Mapping[str, Sequence[FeatureValue]]
    columns: Columns


def columns_of_rows(rows: Sequence[Mapping[str, Sequence[FeatureValue]]]
                    ) -> dict[str, list[Any]] | None:
    """Per-candidate feature maps as columns, or None when they do not form columns.

    They do when every candidate names the same features with one value each
    (the common case); otherwise the caller scores them row by row.
    """
    if not rows:
        return {}
    names = rows[0].keys()
    try:
        if any(r.keys() != names for r in rows):
            return None
        return {name: [v for (v,) in (r[name] for r in rows)] for name in names}
    except ValueError:  # a value list of another length than one
        return None


@dataclass(frozen=True)
class _Plan:
    """What a model spec reads: per sparse feature its table and source, the history
    features; ``columnar`` False for a model with parts this module does not score."""

    sparse: tuple[tuple[str, str], ...]  # (feature, table)
    dense: tuple[str, ...]
    history: tuple[str, ...]
    columnar: bool


# The model settings the columnar path scores as the reference path does (the
# in-batch terms only act in training). A model with any other setting on is
# scored row by row (a part of the model added later, until it is added here).
_COLUMNAR_SETTINGS = frozenset({
    "sparse_features", "dense_features", "embedding_dim", "hidden", "history_features",
    "history_cap", "history_strength", "in_batch_terms", "in_batch_strength",
    "in_batch_weight", "wide_terms", "wide_lr"})


@lru_cache(maxsize=16)
def _plan(spec: str) -> _Plan:
    model = json.loads(spec)["model"]
    tables = spec_feature_tables(spec)
    columnar = not any(v for k, v in model.items() if k not in _COLUMNAR_SETTINGS)
    return _Plan(tuple(tables.items()), tuple(model["dense_features"]),
                 tuple(model["history_features"]), columnar)


def _rows_of(request: CandidateColumns) -> list[tuple[int, int, dict[str, Any]]]:
    """The reference path's rows of ``request``: its features, each candidate's column values."""
    n = len(request.items)
    for name, values in request.columns.items():
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} candidates")
    return [(request.user, item, {**request.shared, **{k: (v[i],) for k, v in
                                                       request.columns.items()}})
            for i, item in enumerate(request.items)]


def _ids(values: Sequence[FeatureValue], batcher: Batcher) -> torch.Tensor:
    """The raw ids of a list of categorical values, as the batcher makes them."""
    ids = batcher.raw_ids(list(values))
    try:
        return torch.from_numpy(np.fromiter(ids, dtype=np.int64, count=len(ids)))
    except OverflowError:
        raise ValueError("an id does not fit in a signed 64-bit integer") from None


class _Source:
    """Where one sparse feature's ids come from: the request (``shared``) or a column."""

    def __init__(self, request: CandidateColumns, feature: str, batcher: Batcher
                 ) -> None:
        n = len(request.items)
        self.shared = True
        self.ids: torch.Tensor  # per candidate ([n]) or the request's ([k], any k)
        if feature == "item_id":
            self.shared, self.ids = False, _ids(request.items, batcher)
        elif feature == "user_id":
            self.ids = torch.tensor([request.user], dtype=torch.int64)
        elif feature in request.columns:
            self.shared, self.ids = False, _ids(request.columns[feature], batcher)
            if self.ids.numel() != n:
                raise ValueError(f"column {feature!r} has {self.ids.numel()} values for "
                                 f"{n} candidates")
        else:
            self.ids = _ids(request.shared.get(feature, ()), batcher)


def _rows(table: Any, ids: torch.Tensor) -> torch.Tensor:
    """``[len(ids), dim]`` rows of ``ids`` (zeros where absent)."""
    return table.read(table.lookup(ids))  # type: ignore[no-any-return]


def _feature_rows(tables: Sequence[Any], ids: Sequence[torch.Tensor],
                  thresholds: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """``[len(ids[k]), dim]`` rows of each ``(tables[k], ids[k])``, OptEmbed's mask of
    ``thresholds[k]`` applied, with one lookup per store for all the tables it holds
    (a replica holds them in one)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(tables)
    stores: dict[int, tuple[Any, list[int]]] = {}
    for k, table in enumerate(tables):
        stores.setdefault(id(table.store), (table.store, []))[1].append(k)
    for store, at in stores.values():
        keys, tags = tagged([(ids[k], tables[k].tag) for k in at])
        rows = store.read(store.lookup(tags, keys))
        for k, part in zip(at, rows.split([ids[k].numel() for k in at])):
            out[k] = _masked(part, thresholds[k])
    return out


def _masked(rows: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    if threshold is None:
        return rows
    margin = rows.abs().sum(dim=1) - threshold
    hard = (margin > 0).to(rows.dtype)
    # As the embedding collection's mask evaluates it (its straight-through
    # form), so that scores match it to the bit.
    return rows * (hard + margin - margin).unsqueeze(1)


def _mean(rows: torch.Tensor) -> torch.Tensor:
    """``[dim]``: the mean of ``rows`` (zeros for none), summed as the batch's pooling sums."""
    if rows.shape[0] == 1:  # one id: the row, as the batch pools one id per example
        return rows[0]
    total = torch.zeros((1, rows.shape[1]), dtype=rows.dtype).index_add(
        0, torch.zeros(rows.shape[0], dtype=torch.int64), rows)
    return (total / max(1, rows.shape[0]))[0]


def score_columns(state: Any, request: CandidateColumns) -> torch.Tensor:
    """Click probabilities ``[len(request.items)]`` under ``state`` (a replica's version).

    ``state`` has the replica's ``spec``, ``model``, ``tables``, ``embeddings``,
    ``batcher`` and ``event_time_ms``; the caller holds it against deltas.
    Raises ValueError for a column whose length is not the candidates' count.
    """
    plan = _plan(state.spec)
    if not plan.columnar:
        return state.score(_rows_of(request))  # type: ignore[no-any-return]
    n = len(request.items)
    thresholds = state.embeddings.threshold_state() if state.embeddings.prune_alpha else {}
    with torch.inference_mode():
        sources = {f: _Source(request, f, state.batcher) for f, _ in plan.sparse}
        pooled = torch.empty((n, len(plan.sparse), state.model.row_dim))
        rows_of = _feature_rows([state.tables[table] for _, table in plan.sparse],
                                [sources[feature].ids for feature, _ in plan.sparse],
                                [thresholds.get(table) for _, table in plan.sparse])
        for k, ((feature, _), rows) in enumerate(zip(plan.sparse, rows_of)):
            pooled[:, k] = _mean(rows) if sources[feature].shared else rows
        dense = torch.empty((n, len(plan.dense)))
        for k, feature in enumerate(plan.dense):
            if feature in request.columns:
                dense[:, k] = dense_column(list(request.columns[feature]))
            else:
                dense[:, k] = dense_column([(request.shared.get(feature) or (0.0,))[0]])
        history = torch.empty((n, len(plan.history), 2))
        for k, feature in enumerate(plan.history):
            source = sources[feature]
            table = state.tables[history_table_name(feature)]
            if source.shared:
                history[:, k] = _rows(table, source.ids[:1])[0] if source.ids.numel() \
                    else 0.0
            else:
                history[:, k] = _rows(table, source.ids)
        logits = state.model(pooled, dense, history if plan.history else None)
        if state.wide.terms:
            logits = logits + state.wide.logits_of(_TermKeys(sources, n, state.wide.max_keys),
                                                   n, state.event_time_ms)
        return torch.sigmoid(logits)


class _CrossPlan(NamedTuple):
    """Terms as positions into their features: ``at[t, j]`` the ``j``-th feature of
    term ``t`` (padded with its last), ``longer[t, j]`` whether it has a ``j``-th."""

    features: tuple[str, ...]
    at: torch.Tensor
    longer: torch.Tensor


@lru_cache(maxsize=64)
def _cross_plan(terms: tuple[tuple[str, ...], ...]) -> _CrossPlan:
    features = tuple(dict.fromkeys(f for term in terms for f in term))
    position = {f: i for i, f in enumerate(features)}
    longest = max(len(term) for term in terms)
    at = torch.tensor([[position[term[min(j, len(term) - 1)]] for j in range(longest)]
                       for term in terms])
    longer = torch.tensor([[j < len(term) for j in range(longest)] for term in terms])
    return _CrossPlan(features, at, longer)


class _TermKeys:
    """A request's wide-term keys per candidate, from its sources: a candidate
    column gives each candidate its value, a request feature each of its values
    to every candidate (the entries, and their order, of the row-by-row batch, as
    far as its first ``max_keys`` per candidate)."""

    def __init__(self, sources: Mapping[str, _Source], n: int, max_keys: int) -> None:
        self.sources, self.n, self.max_keys = sources, n, max_keys
        self.candidates = torch.arange(n)
        self._columns: dict[str, torch.Tensor | None] = {}

    def _column(self, feature: str) -> torch.Tensor | None:
        """One id per candidate, or None (a request feature of several values, or none)."""
        if feature not in self._columns:
            source = self.sources[feature]
            self._columns[feature] = source.ids if not source.shared else \
                source.ids.expand(self.n) if source.ids.numel() == 1 else None
        return self._columns[feature]

    def many(self, terms: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every term's entries, ``(example, key, entries per term)``, in the order
        of ``terms``: the terms whose features have one id per candidate keyed in
        one pass, the others (a request feature of several values) one by one."""
        plan = _cross_plan(tuple(map(tuple, terms)))
        if all(self._column(f) is not None for f in plan.features):  # the common request
            keys = self._crossed(plan)
            return (self.candidates.repeat(len(terms)), keys.reshape(-1),
                    torch.full((len(terms),), self.n, dtype=torch.int64))
        is_columnar = [all(self._column(f) is not None for f in t) for t in terms]
        columnar = [t for t, c in zip(terms, is_columnar) if c]
        keys = self._crossed(_cross_plan(tuple(map(tuple, columnar)))) if columnar else \
            torch.empty((0, self.n), dtype=torch.int64)
        keyed = iter(keys)
        parts = [(self.candidates, next(keyed)) if c else self(t)
                 for t, c in zip(terms, is_columnar)]
        return (torch.cat([e for e, _ in parts]), torch.cat([k for _, k in parts]),
                torch.tensor([k.numel() for _, k in parts], dtype=torch.int64))

    def _crossed(self, plan: _CrossPlan) -> torch.Tensor:
        """``[terms, n]``: the keys of terms whose features all have a column."""
        matrix = torch.stack([self._column(f) for f in plan.features])  # type: ignore[misc]
        key = matrix.index_select(0, plan.at[:, 0])
        for j in range(1, plan.at.shape[1]):
            crossed = cross_keys(key, matrix.index_select(0, plan.at[:, j]))
            key = torch.where(plan.longer[:, j:j + 1], crossed, key)
        return key

    def __call__(self, term: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        columns = [self._column(f) for f in term]
        if all(c is not None for c in columns):  # one key per candidate
            key = columns[0]
            for column in columns[1:]:
                key = cross_keys(key, column)
            return self.candidates, key  # type: ignore[return-value]
        example = self.candidates
        key = torch.zeros(self.n, dtype=torch.int64)
        per = 1  # entries per candidate so far, the same for every candidate
        for feature in term:
            source = self.sources[feature]
            if not source.shared:
                key = cross_keys(key, source.ids.index_select(0, example))
                continue
            # Every entry so far times each of the request's values, as far as the
            # first max_keys (which no value past the first max_keys is in).
            ids = source.ids[:self.max_keys]
            k = ids.numel()
            key = cross_keys(key.view(self.n, per, 1), ids.view(1, 1, k))
            per = min(per * k, self.max_keys)
            key = key.reshape(self.n, -1)[:, :per].reshape(-1)
            example = torch.repeat_interleave(self.candidates, per)
        return example, key

"""Batching events into tensors: a KeyedJaggedTensor of raw ids plus dense tensors."""

from __future__ import annotations

import array
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

try:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
except ModuleNotFoundError as e:  # not declared in the package metadata: see pyproject.toml
    raise ImportError("streamrec needs torchrec: pip install --no-deps torchrec==1.8.0 (its "
                      "metadata asks for the CUDA fbgemm-gpu; fbgemm-gpu-cpu serves it)") from e

from streamrec.ingest.event import Event, FeatureValue
from streamrec.ingest.ids import INT64_MAX, INT64_MIN, to_id
from streamrec import native

__all__ = ["Batch", "Batcher", "dense_column", "dense_value"]

_USER, _ITEM, _FEATURES, _LABEL, _SAMPLE_RATE, _TIMESTAMP = map(
    Event._fields.index, ("user_id", "item_id", "features", "label", "sample_rate",
                          "timestamp_ms"))
_NATIVE_FIELDS = (_USER, _ITEM, _FEATURES, _LABEL, _SAMPLE_RATE, _TIMESTAMP)


@dataclass
class Batch:
    """A training (or scoring) batch of B examples.

    ``sparse`` has one key per sparse feature (the model's order) with raw
    int64 ids, a variable number per example. ``dense`` is ``[B, n_dense]``
    float32; ``labels`` and ``sample_rates`` are ``[B]`` float32;
    ``timestamps_ms`` is ``[B]`` int64 event time.
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    sample_rates: torch.Tensor
    timestamps_ms: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, index: torch.Tensor) -> Batch:
        """The examples at ``index`` (``[M]`` int64 positions, in that order): a batch of M.

        Equal to building those examples' events alone (every column is per
        example), for a fraction of the cost.
        """
        keys = self.sparse.keys()
        lengths = self.sparse.lengths().view(len(keys), len(self))
        values = self.sparse.values()
        taken = lengths.index_select(1, index)
        if values.numel() == lengths.numel() and bool((lengths == 1).all()):
            # One id per example and feature (the common case): a column gather.
            picked = values.view(len(keys), -1).index_select(1, index).reshape(-1)
        else:
            starts = _exclusive_cumsum(lengths.reshape(-1)).view(lengths.shape)
            picked = values.index_select(0, _ranges(starts.index_select(1, index).reshape(-1),
                                                    taken.reshape(-1)))
        sparse = KeyedJaggedTensor(keys=keys, values=picked, lengths=taken.reshape(-1),
                                   stride=int(index.numel()))
        return Batch(sparse=sparse, dense=self.dense.index_select(0, index),
                     labels=self.labels.index_select(0, index),
                     sample_rates=self.sample_rates.index_select(0, index),
                     timestamps_ms=self.timestamps_ms.index_select(0, index))

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """One batch of ``batches``' examples, in order (they share one feature schema).

        Raises ValueError for batches of different sparse features.
        """
        if not batches:
            raise ValueError("batches: nothing to concatenate")
        if len(batches) == 1:
            return batches[0]
        keys = batches[0].sparse.keys()
        if any(b.sparse.keys() != keys for b in batches):
            raise ValueError("batches: sparse features differ "
                             f"({[b.sparse.keys() for b in batches]})")
        lengths = [b.sparse.lengths().view(len(keys), len(b)) for b in batches]
        # Feature-major: every batch's ids of the first feature, then of the next...
        pieces = [b.sparse.values().split(n.sum(dim=1).tolist())
                  for b, n in zip(batches, lengths)]
        values = torch.cat([p[k] for k in range(len(keys)) for p in pieces]) if keys else \
            batches[0].sparse.values()
        sparse = KeyedJaggedTensor(keys=keys, values=values,
                                   lengths=torch.cat(lengths, dim=1).reshape(-1),
                                   stride=sum(len(b) for b in batches))
        return Batch(sparse=sparse, dense=torch.cat([b.dense for b in batches]),
                     labels=torch.cat([b.labels for b in batches]),
                     sample_rates=torch.cat([b.sample_rates for b in batches]),
                     timestamps_ms=torch.cat([b.timestamps_ms for b in batches]))


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0, dtype=torch.int64) - x


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The positions ``starts[i], ..., starts[i] + lengths[i] - 1`` for each i, in order."""
    lengths = lengths.to(torch.int64)
    placed = _exclusive_cumsum(lengths)  # where each range goes in the output
    total = int(lengths.sum())
    # Each output position is its own index plus its range's shift: a running
    # sum of the shifts' changes at the ranges' first positions (this CPU
    # build's repeat_interleave takes ~10x as long).
    some = torch.nonzero(lengths).reshape(-1)
    shift = (starts.index_select(0, some) - placed.index_select(0, some)).to(torch.int64)
    steps = torch.zeros(total, dtype=torch.int64)
    steps.index_copy_(0, placed.index_select(0, some),
                      torch.diff(shift, prepend=shift.new_zeros(1)))
    return torch.cumsum(steps, 0) + torch.arange(total, dtype=torch.int64)


def dense_value(values: Sequence[FeatureValue]) -> float:
    """The model input for one numeric feature: signed log1p of its first value.

    Counts and prices span orders of magnitude; log1p keeps them in a range
    an MLP trains on without per-feature normalisation statistics.
    """
    if not values:
        return 0.0
    v = values[0]
    if isinstance(v, str):
        return 0.0
    x = float(v)
    if not math.isfinite(x):
        return 0.0
    return math.copysign(math.log1p(abs(x)), x)


def _int64(values: Sequence[int]) -> torch.Tensor:
    # numpy reads a list of ints ~3x faster than torch.tensor does.
    try:
        return torch.from_numpy(np.fromiter(values, dtype=np.int64, count=len(values)))
    except OverflowError:
        big = next(v for v in values if not INT64_MIN <= v <= INT64_MAX)
        raise ValueError(f"id {big} does not fit in a signed 64-bit integer") from None


def _float32(values: Sequence[float]) -> torch.Tensor:
    if not values:
        return torch.zeros(0, dtype=torch.float32)
    return torch.frombuffer(array.array("d", values), dtype=torch.float64).float()


def dense_column(raw: list[object]) -> torch.Tensor:
    """:func:`dense_value` of each (first) value, vectorised when all are numbers."""
    if set(map(type, raw)) <= {float, int, bool}:
        try:
            x = torch.tensor(raw, dtype=torch.float64)
        except (OverflowError, RuntimeError):  # ints beyond float64's integer range
            pass
        else:
            x = torch.where(torch.isfinite(x), x, 0.0)
            return (torch.sign(x) * torch.log1p(x.abs())).float()
    return _float32([dense_value((v,)) for v in raw])


def _one_each(name: str, features: Sequence[Mapping[str, tuple[FeatureValue, ...]] | None]
              ) -> list[FeatureValue]:
    """Each example's only value of ``name``, in two C-level passes: the common case.

    Raises TypeError or ValueError unless every example's features are a dict
    holding exactly one value for ``name`` (absent: ``None`` does not unpack;
    None or another Mapping type: ``dict.get`` refuses it). ``dict.get``, not
    ``[]``: a defaultdict must not invent (and store) the absent ones.
    """
    return [v for (v,) in map(dict.get, features, itertools.repeat(name))]  # type: ignore[arg-type]


def _firsts(name: str, features: Sequence[Mapping[str, tuple[FeatureValue, ...]] | None]
            ) -> list[FeatureValue]:
    """Each example's first value of numeric feature ``name`` (0.0 where it has none)."""
    try:
        return _one_each(name, features)
    except (TypeError, ValueError):
        return [(f.get(name) or (0.0,))[0] if f else 0.0 for f in features]


class _IdMemo(dict):  # type: ignore[type-arg]
    """Categorical value -> raw id, remembering up to ``cap`` strings.

    Only strings are remembered: numbers are cheap to convert, and equal
    numbers of different types (``10**20`` and ``1e20``) must not share an
    entry, since :func:`to_id` treats them differently.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def __missing__(self, value: FeatureValue) -> int:
        raw = to_id(value)
        if type(value) is str and len(self) < self.cap:
            self[value] = raw
        return raw


class Batcher:
    """Turns decoded events into a :class:`Batch` for a fixed feature schema.

    ``user_id`` and ``item_id`` as sparse feature names read the event's ids;
    any other name reads ``event.features[name]`` (absent = no ids).
    """

    def __init__(self, sparse_features: Sequence[str], dense_features: Sequence[str]) -> None:
        self.sparse_features = list(sparse_features)
        self.dense_features = list(dense_features)
        # Strings repeat (countries, categories): a dict hit instead of to_id's
        # type checks and digest memo, per value.
        self._ids = _IdMemo(1 << 16)
        # The one-pass builder's view of the schema: 0 / 1 for the event's
        # user / item id, else the feature's name.
        self._native_sparse = tuple({"user_id": 0, "item_id": 1}.get(f, f)
                                    for f in self.sparse_features)
        self._native_dense = tuple(self.dense_features)

    # Built column by column (one comprehension per feature over the whole
    # batch) rather than event by event: the batcher runs once per event on
    # the training path, and per-event Python calls would cost as much as the
    # training step itself at large batch sizes.

    def _column(self, feature: str, user_ids: Sequence[int], item_ids: Sequence[int],
                features: Sequence[Mapping[str, tuple[FeatureValue, ...]] | None]
                ) -> tuple[list[int], list[int] | None]:
        """``(ids, lengths)`` of one feature; ``lengths`` None means one id per example."""
        if feature == "user_id":
            return list(user_ids), None
        if feature == "item_id":
            return list(item_ids), None
        lengths: list[int] | None = None
        try:
            ids: list = _one_each(feature, features)
        except (TypeError, ValueError):
            per_example = [f.get(feature, ()) if f else () for f in features]
            ids = list(itertools.chain.from_iterable(per_example))
            lengths = [len(v) for v in per_example]
        return self.raw_ids(ids), lengths

    def raw_ids(self, values: list[FeatureValue]) -> list[int]:
        """The raw ids of categorical ``values`` (``values`` itself when all are ints)."""
        if set(map(type, values)) <= {int}:
            return values  # type: ignore[return-value]
        return list(map(self._ids.__getitem__, values))

    def build(self, events: Sequence[Event]) -> Batch:
        """Batch ``events`` (examples; a missing label counts as 0)."""
        if not events:
            return self._build([], [], [])
        fast = self._build_native(events)
        if fast is not None:
            return fast
        # Events are named tuples: one transpose gives every field's column.
        columns = list(zip(*events))
        batch = self._build(columns[_USER], columns[_ITEM], columns[_FEATURES])
        try:
            batch.labels = _float32(columns[_LABEL])
        except TypeError:  # array.array refuses None (no label: 0, as any falsy one)
            batch.labels = _float32([v or 0.0 for v in columns[_LABEL]])
        batch.sample_rates = _float32(columns[_SAMPLE_RATE])
        batch.timestamps_ms = _int64(columns[_TIMESTAMP])
        return batch

    def _build_native(self, events: Sequence[Event]) -> Batch | None:
        """:meth:`build` in one pass over the events (streamrec.native's batch.c),
        where every sparse feature has one value per example; else None."""
        columns = native.batch_columns(
            list(events),  # a private list: see batch.c
            self._native_sparse, self._native_dense, self._ids, _NATIVE_FIELDS)
        if columns is None:
            return None
        values, dense, labels, rates, stamps = columns
        n = len(events)
        sparse = KeyedJaggedTensor(
            keys=self.sparse_features, values=values,
            lengths=torch.ones(len(self.sparse_features) * n, dtype=torch.int32), stride=n)
        return Batch(sparse=sparse, dense=dense, labels=labels, sample_rates=rates,
                     timestamps_ms=stamps)

    def build_rows(
        self, rows: Sequence[tuple[int, int, Mapping[str, tuple[FeatureValue, ...]] | None]]
    ) -> Batch:
        """Batch ``(user_id, item_id, features)`` rows, e.g. serving candidates.

        Labels are zeros, sample rates ones and timestamps zeros.
        """
        return self._build([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def _build(self, user_ids: Sequence[int], item_ids: Sequence[int],
               features: Sequence[Mapping[str, tuple[FeatureValue, ...]] | None]) -> Batch:
        n = len(user_ids)
        values: list[int] = []
        lengths: list[torch.Tensor] = []
        for feature in self.sparse_features:
            ids, counts = self._column(feature, user_ids, item_ids, features)
            values += ids
            lengths.append(torch.ones(n, dtype=torch.int32) if counts is None else
                           torch.from_numpy(np.fromiter(counts, dtype=np.int32, count=n)))
        sparse = KeyedJaggedTensor(
            keys=self.sparse_features,
            values=_int64(values),
            lengths=torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int32),
            stride=n,
        )
        if self.dense_features:
            dense = torch.stack([dense_column(_firsts(name, features))
                                 for name in self.dense_features], dim=1) if n else \
                torch.zeros((0, len(self.dense_features)), dtype=torch.float32)
        else:
            dense = torch.zeros((n, 0), dtype=torch.float32)
        return Batch(
            sparse=sparse,
            dense=dense,
            labels=torch.zeros(n, dtype=torch.float32),
            sample_rates=torch.ones(n, dtype=torch.float32),
            timestamps_ms=torch.zeros(n, dtype=torch.int64),
        )

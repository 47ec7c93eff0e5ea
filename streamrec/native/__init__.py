"""Compiled kernels of the training step, the batcher and the Kafka reader.

Built by the package build (setup.py): ``_ops`` registers the torch operators
``torch.ops.streamrec.*`` (C++: the FM head, the id dedup, the id index's
probes, row initialisation, the gather of rows, the history counts; inputs
checked, autograd on ``fm_head`` and ``gather_rows``); ``_batch`` and
``_records`` are CPython extensions. This module wraps them with typed calls.
"""

from __future__ import annotations

import torch

try:
    from streamrec.native import _batch, _ops, _records  # noqa: F401 (_ops registers the ops)
except ImportError as e:  # a source checkout nobody installed or built
    raise ImportError(f"streamrec's compiled extensions are missing ({e}): install the package "
                      "(pip install --no-build-isolation -e .) or build them in place "
                      "(python setup.py build_ext --inplace)") from e
from streamrec.native import fake as _fake  # noqa: F401 (shapes for FakeTensor / compile)

__all__ = ["batch_columns", "fm_head", "gather_rows", "history_prefix", "id_normal",
           "index_find", "index_hash", "index_place", "kafka_records", "unique_pairs",
           "wide_learn"]

_streamrec = torch.ops.streamrec
# The overloads themselves: calling one skips the packet's overload resolution.
_fm_head = _streamrec.fm_head.default
_gather_rows = _streamrec.gather_rows.default
_history_prefix = _streamrec.history_prefix.default
_unique_pairs = _streamrec.unique_pairs.default
_index_hash = _streamrec.index_hash.default
_index_find = _streamrec.index_find.default
_index_place = _streamrec.index_place.default
_id_normal = _streamrec.id_normal.default
_wide_learn = _streamrec.wide_learn.default

Columns = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def fm_head(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor
            ) -> torch.Tensor:
    """``[B]``: an FM's per-field part (first-order terms, second-order interactions,
    a linear layer over the factors) for ``rows`` ``[F, B, d+1]`` (any strides),
    ``extra`` ``[B, d]`` (one more field's factors) or None and ``weight``
    ``[F (+1 with extra), d]``; float32 or float64, differentiable in all three."""
    return _fm_head(rows, extra, weight)


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.index_select(0, index)`` for a 2-D float ``table`` and int64 ``index``,
    differentiable in ``table``: one copy per row each way (torch's index_select and
    its index_add backward run a generic loop per element of rows of a few floats)."""
    return _gather_rows(table, index)


def history_prefix(stored: torch.Tensor, inverse: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(before [N, 2], totals [U, 2])``: per element (in order), its key's stored
    (n, c) plus the count and label sum of the earlier elements with the same key
    (``inverse`` [N] indexes ``stored`` [U, 2]); and per key, the batch's (count, sum)."""
    return _history_prefix(stored, inverse, y)


def unique_pairs(ids: torch.Tensor, tags: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dedup of the int64 pairs ``(ids[i], tags[i])`` by hashing:
    ``(ids, tags, inverse, counts)`` of the unique pairs, in order of first occurrence."""
    return _unique_pairs(ids, tags)


def wide_learn(state: torch.Tensor, offsets: torch.Tensor, slots: torch.Tensor,
               learnable: torch.Tensor, base: torch.Tensor, outcomes: torch.Tensor,
               lr: float, acc0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums [B], new state [U, 2])``: per-event Adagrad on the wide terms' weights,
    in example order. Example ``i`` reads the rows ``slots[offsets[i]:offsets[i+1]]``
    of ``state`` (weight, sum of squared gradients); its sum before its own step is
    returned; with outcome ``(n, c)`` its gradient is ``n p - c``, ``p`` =
    sigmoid(``base[i]`` + sum), applied to each of its ``learnable`` rows as
    ``w -= lr g / (K sqrt(acc0 + G))`` (``K``: the example's rows). An outcome
    of zeros only reads."""
    return _wide_learn(state, offsets, slots, learnable, base, outcomes, lr, acc0)


def index_hash(ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
    """The id index's slot hash of each id (of each ``(tag, id)``): 32 bits, as int64."""
    return _index_hash(ids, tags)


def index_find(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
               cap_bits: torch.Tensor, global_bits: int, stride: int, row_ids: torch.Tensor,
               row_tags: torch.Tensor | None, ids: torch.Tensor, tags: torch.Tensor | None
               ) -> torch.Tensor:
    """The slot of each id (each ``(tag, id)``) in an id index's arrays, or -1."""
    return _index_find(slots, directory, depth, cap_bits, global_bits, stride, row_ids,
                       row_tags, ids, tags)


def index_place(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
                cap_bits: torch.Tensor, global_bits: int, stride: int, used: torch.Tensor,
                live: torch.Tensor, values: torch.Tensor) -> None:
    """Writes slot ``values`` of absent keys into free slots, in place, counting per
    segment the empty slots used (``used``) and the entries (``live``)."""
    _index_place(slots, directory, depth, cap_bits, global_bits, stride, used, live, values)


def id_normal(ids: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """``[len(ids), dim]`` float32 standard normals, a function of (id, column, ``offset``)."""
    return _id_normal(ids, dim, offset)


def batch_columns(events: list[object], sparse: tuple[int | str, ...], dense: tuple[str, ...],
                  memo: dict[object, int], fields: tuple[int, int, int, int, int, int]
                  ) -> Columns | None:
    """The batcher's common case in one pass (batch.c): ``(values, dense, labels,
    sample_rates, timestamps_ms)``, or None where the batch needs the general path.
    ``events`` is a list no one else holds; ``sparse`` holds 0 for the user id, 1
    for the item id, or a feature name; ``fields`` the Event's indexes of user_id,
    item_id, features, label, sample_rate and timestamp_ms."""
    n = len(events)
    values = torch.empty(len(sparse) * n, dtype=torch.int64)
    dense_out = torch.empty((n, len(dense)), dtype=torch.float32)
    labels, rates = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
    stamps = torch.empty(n, dtype=torch.int64)
    done = _batch.batch_columns(events, sparse, dense, memo, fields, values.numpy(),
                                dense_out.numpy(), labels.numpy(), rates.numpy(),
                                stamps.numpy())
    return (values, dense_out, labels, rates, stamps) if done else None


def kafka_records(data: bytes, start: int, count: int, base_offset: int, first_timestamp: int,
                  log_append_time: int, timestamp_type: int, record_type: type,
                  topic: str, partition: int, leader_epoch: int
                  ) -> tuple[list[tuple], int] | None:
    """``count`` records of a v2 batch from ``data[start:]`` as ``record_type`` tuples, and
    their bytes (records.c); None where the Python reader must read them (headers,
    anything malformed). ``log_append_time`` stamps every record of a
    ``timestamp_type`` 1 batch."""
    return _records.kafka_records(data, start, count, base_offset, first_timestamp,
                                  log_append_time, timestamp_type, record_type, topic,
                                  partition, leader_epoch)

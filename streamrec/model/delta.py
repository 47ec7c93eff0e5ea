"""Parameter deltas and their wire form: bounded-size ``ParameterChunk`` messages.

A :class:`ParameterDelta` takes a replica from ``base_version`` to ``version``
with typed records (:mod:`streamrec.model.records`); on the wire it is a stream
of chunks of at most ``max_chunk_bytes``, ids as little-endian int64 and values
as float32, decoded with ``frombuffer`` (nothing from the network is unpickled).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamrec.protos import sync_pb2
from streamrec.errors import SyncError
from streamrec.model.records import DenseParameters, EvictedIds, TableDelta, UpsertedRows

__all__ = ["DenseParameters", "EvictedIds", "ParameterDelta", "TableDelta", "UpsertedRows",
           "encode_chunks", "decode_chunks", "merge_deltas", "PRUNE_THRESHOLD_PREFIX"]

_ID = np.dtype("<i8")
_F32 = np.dtype("<f4")
# Room for a chunk's header fields and per-message protobuf framing.
_HEADER_BYTES = 512
# On the wire, a dense tensor named "<prefix><table>" is that table's OptEmbed threshold.
PRUNE_THRESHOLD_PREFIX = "prune_threshold/"


@dataclass
class ParameterDelta:
    """What takes a replica from ``base_version`` to ``version``.

    Per table the rows touched since the base and the ids evicted since then,
    and the dense parameters (empty: unchanged). A full snapshot (``full``)
    replaces everything the replica holds.
    """

    version: int
    base_version: int
    full: bool
    tables: list[TableDelta]
    dense: DenseParameters = field(default_factory=DenseParameters)
    event_time_ms: int = 0
    exported_at_ms: int = 0
    model_spec: str = ""

    def num_rows(self) -> int:
        return sum(len(t.upserted) for t in self.tables)


def merge_deltas(deltas: list[ParameterDelta]) -> ParameterDelta:
    """One delta equal to applying ``deltas`` (consecutive, incremental) in order.

    From the first's base to the last's version, with the last's dense
    weights (earlier deltas' may be left out). Per id, what happened last
    wins: a row touched after its eviction is sent as a row; one evicted after
    its last touch, as an evicted id. A replica applies it atomically, so one
    that fell behind catches up in one step instead of through versions whose
    dense weights the publisher no longer holds.
    """
    if not deltas:
        raise ValueError("no deltas to merge")
    for before, after in zip(deltas, deltas[1:]):
        if after.full or after.base_version != before.version:
            raise ValueError(f"deltas do not follow on: {before.version} -> "
                             f"{after.base_version}{' (full)' if after.full else ''}")
    first, last = deltas[0], deltas[-1]
    names = list(dict.fromkeys(t.table for d in deltas for t in d.tables))
    tables = []
    for name in names:
        parts = [t for d in deltas for t in d.tables if t.table == name]
        dim = parts[-1].dim
        # Every event on an id, in order: per delta its evicted ids, then its
        # rows (the order a replica applies them in).
        ids, order, source = [], [], []
        rows_before = 0  # rows of the earlier parts: where this part's rows start
        for k, t in enumerate(parts):
            evicted, upserted = t.evicted.ids, t.upserted.ids
            ids += [evicted, upserted]
            order += [torch.full_like(evicted, 2 * k), torch.full_like(upserted, 2 * k + 1)]
            source += [torch.full_like(evicted, -1),
                       torch.arange(rows_before, rows_before + upserted.numel())]
            rows_before += upserted.numel()
        all_ids, all_order, all_source = torch.cat(ids), torch.cat(order), torch.cat(source)
        if all_ids.numel() == 0:
            tables.append(TableDelta(name, dim, UpsertedRows.empty(dim)))
            continue
        rows = torch.cat([t.upserted.values for t in parts])
        by = np.lexsort((all_order.numpy(), all_ids.numpy()))  # by id, then by event order
        sorted_ids = all_ids.numpy()[by]
        last_of_id = np.flatnonzero(np.append(sorted_ids[1:] != sorted_ids[:-1], True))
        final = torch.from_numpy(by[last_of_id])
        final_ids, final_source = all_ids.index_select(0, final), all_source.index_select(0, final)
        kept = final_source >= 0
        tables.append(TableDelta(name, dim, UpsertedRows(
            final_ids[kept], rows.index_select(0, final_source[kept])),
            EvictedIds(final_ids[~kept])))
    return ParameterDelta(version=last.version, base_version=first.base_version, full=False,
                          tables=tables, dense=last.dense, event_time_ms=last.event_time_ms,
                          exported_at_ms=last.exported_at_ms, model_spec=last.model_spec)


def _ids_bytes(ids: torch.Tensor) -> bytes:
    return ids.detach().to(torch.int64).numpy().astype(_ID, copy=False).tobytes()


def _f32_bytes(values: torch.Tensor) -> bytes:
    return values.detach().to(torch.float32).contiguous().numpy().astype(_F32, copy=False).tobytes()


def _dense_messages(dense: DenseParameters) -> list[sync_pb2.DenseTensor]:
    named = [*dense.weights.items(),
             *((PRUNE_THRESHOLD_PREFIX + table, t) for table, t in dense.prune_thresholds.items())]
    return [sync_pb2.DenseTensor(name=name, shape=list(t.shape), data=_f32_bytes(t))
            for name, t in named]


def _pieces(t: TableDelta, room: int) -> Iterator[sync_pb2.EmbeddingTableDelta]:
    """``t`` as table messages of at most ``room`` bytes: evicted ids first, then rows."""
    room -= 32 + len(t.table.encode())  # the message's own fields and framing
    row_bytes = 8 + 4 * t.dim
    if room < row_bytes:
        raise SyncError(f"table {t.table!r}: a row of dim {t.dim} does not fit in one chunk; "
                        "raise sync.max_chunk_bytes")
    evicted = t.evicted.ids
    per = room // 8
    for start in range(0, evicted.numel(), per):
        yield sync_pb2.EmbeddingTableDelta(table=t.table, dim=t.dim,
                                           evicted_ids=_ids_bytes(evicted[start:start + per]))
    ids, rows = t.upserted.ids, t.upserted.values
    per = room // row_bytes
    for start in range(0, ids.numel(), per):
        yield sync_pb2.EmbeddingTableDelta(table=t.table, dim=t.dim,
                                           ids=_ids_bytes(ids[start:start + per]),
                                           rows=_f32_bytes(rows[start:start + per]))


def encode_chunks(delta: ParameterDelta, max_chunk_bytes: int) -> Iterator[sync_pb2.ParameterChunk]:
    """Split ``delta`` into chunks of at most ``max_chunk_bytes`` serialized each.

    The model spec travels in the first chunk; dense tensors are packed
    whole, table rows and evicted ids split as needed. Raises
    :class:`SyncError` if one dense tensor or one row cannot fit in a chunk.
    """
    budget = max_chunk_bytes - _HEADER_BYTES

    def new_chunk(index: int) -> sync_pb2.ParameterChunk:
        return sync_pb2.ParameterChunk(
            version=delta.version, base_version=delta.base_version, full=delta.full,
            chunk_index=index, event_time_ms=delta.event_time_ms,
            exported_at_ms=delta.exported_at_ms)

    current = new_chunk(0)
    current.model_spec = delta.model_spec
    used = current.ByteSize()
    if used > budget:
        raise SyncError(f"the model spec takes {used} bytes, over "
                        f"sync.max_chunk_bytes={max_chunk_bytes}")
    pieces: list[tuple[str, Any]] = [("dense", d) for d in _dense_messages(delta.dense)]
    for table in delta.tables:
        pieces.extend(("tables", piece) for piece in _pieces(table, budget))
    for where, piece in pieces:
        size = piece.ByteSize() + 8
        if size > budget:
            raise SyncError(f"dense tensor {piece.name!r} takes {size} bytes, over "
                            f"sync.max_chunk_bytes={max_chunk_bytes}")
        if used + size > budget:
            yield current
            current = new_chunk(current.chunk_index + 1)
            used = current.ByteSize()
        getattr(current, where).append(piece)
        used += size
    current.last = True
    yield current


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SyncError(message)


def decode_chunks(chunks: Iterable[sync_pb2.ParameterChunk]) -> ParameterDelta:
    """Reassemble and validate a delta; raises :class:`SyncError` on any inconsistency."""
    delta: ParameterDelta | None = None
    dense: dict[str, torch.Tensor] = {}
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    dims: dict[str, int] = {}
    expected_index = 0
    finished = False
    for c in chunks:
        _check(not finished, "chunk after the last one")
        _check(c.chunk_index == expected_index,
               f"chunk_index {c.chunk_index}, expected {expected_index}")
        expected_index += 1
        if delta is None:
            delta = ParameterDelta(version=c.version, base_version=c.base_version, full=c.full,
                                   tables=[], event_time_ms=c.event_time_ms,
                                   exported_at_ms=c.exported_at_ms, model_spec=c.model_spec)
        else:
            _check((c.version, c.base_version, c.full)
                   == (delta.version, delta.base_version, delta.full),
                   f"chunk {c.chunk_index} belongs to another delta "
                   f"(version {c.version}, base {c.base_version})")
        for d in c.dense:
            shape = tuple(int(x) for x in d.shape)
            _check(all(x >= 0 for x in shape), f"dense {d.name!r}: negative shape {shape}")
            # Python ints: np.prod in int64 wraps ([2**32, 2**32] counts 0 elements).
            _check(len(d.data) == 4 * math.prod(shape),
                   f"dense {d.name!r}: {len(d.data)} bytes for shape {shape}")
            _check(d.name not in dense, f"dense {d.name!r} sent twice")
            values = np.frombuffer(d.data, dtype=_F32).astype(np.float32)
            try:
                values = values.reshape(shape)
            except ValueError as e:  # over numpy's 64 dimensions, or [0, 2**62]
                raise SyncError(f"dense {d.name!r}: shape {shape} is not an array shape: "
                                f"{e}") from None
            dense[d.name] = torch.from_numpy(values)
        for t in c.tables:
            _check(bool(t.table), "table delta without a table name")
            _check(t.dim > 0, f"table {t.table!r}: dim must be > 0")
            _check(dims.setdefault(t.table, t.dim) == t.dim,
                   f"table {t.table!r}: dim changes between chunks")
            _check(len(t.ids) % 8 == 0 and len(t.evicted_ids) % 8 == 0,
                   f"table {t.table!r}: id bytes are not a multiple of 8")
            n = len(t.ids) // 8
            _check(len(t.rows) == n * t.dim * 4,
                   f"table {t.table!r}: {len(t.rows)} row bytes for {n} ids of dim {t.dim}")
            parts.setdefault(t.table, []).append((
                np.frombuffer(t.ids, dtype=_ID),
                np.frombuffer(t.rows, dtype=_F32).reshape(n, t.dim),
                np.frombuffer(t.evicted_ids, dtype=_ID)))
        finished = c.last
    _check(delta is not None, "empty push: no chunks")
    _check(finished, "push ended before the chunk marked last")
    assert delta is not None
    n = len(PRUNE_THRESHOLD_PREFIX)
    delta.dense = DenseParameters(
        {k: v for k, v in dense.items() if not k.startswith(PRUNE_THRESHOLD_PREFIX)},
        {k[n:]: v for k, v in dense.items() if k.startswith(PRUNE_THRESHOLD_PREFIX)})
    for name, pieces in parts.items():
        dim = dims[name]
        delta.tables.append(TableDelta(name, dim, UpsertedRows(
            torch.from_numpy(np.concatenate([p[0] for p in pieces]).astype(np.int64)),
            torch.from_numpy(
                np.concatenate([p[1] for p in pieces]).astype(np.float32).reshape(-1, dim))),
            EvictedIds(
                torch.from_numpy(np.concatenate([p[2] for p in pieces]).astype(np.int64)))))
    return delta

"""The table interfaces: an embedding table, and the store holding its rows.

Every :class:`EmbeddingTable` names its ``store`` and its ``tag`` (its position
in ``store.names``); training, history features and serving look tables up
through stores (several tables fused in one, or one table through
:class:`SingleTableStore`). The conformance suite in
tests/unit/test_table_conformance.py runs against each implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from streamrec.model.records import TableDelta
from streamrec.model.tables.rows import TableStats

__all__ = ["EmbeddingTable", "SingleTableStore", "TableStore", "sighted_lookup", "stores_of",
           "tagged"]


@runtime_checkable
class TableStore(Protocol):
    """Rows of the tables ``names`` (tag ``t`` is ``names[t]``), addressed by row ids.

    ``lookup`` takes unique ``(tags[i], ids[i])`` pairs and returns their row
    ids, store-wide; -1 stands for "no row" (an id not admitted yet), which
    reads as zeros and takes no update. With ``train`` a lookup counts
    ``counts[i]`` sightings and admits what passes the frequency filter.
    ``expire`` takes one OptEmbed threshold per table (NaN: no pruning).
    ``collective``: lookups and updates are collectives every rank must join
    (distributed tables).
    """

    names: list[str]
    dim: int
    collective: bool

    def lookup(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor: ...
    def read(self, row_ids: torch.Tensor) -> torch.Tensor: ...
    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None: ...
    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None: ...
    def expire(self, now_ms: int, max_rows: int,
               prune_below: torch.Tensor | None = None) -> int: ...


@runtime_checkable
class EmbeddingTable(Protocol):
    """A dynamic table keyed by raw int64 ids (see DynamicEmbeddingTable for semantics).

    ``lookup`` gives row ids, which ``read`` / ``update`` / ``set_rows`` take.
    ``store`` is the :class:`TableStore` holding its rows (shared with other
    tables when fused) and ``tag`` its position in ``store.names``; training,
    history features and serving look tables up through their stores.
    ``shard_count``: how many shards its :meth:`state_dict` holds.
    """

    name: str
    dim: int
    store: TableStore
    tag: int

    @property
    def shard_count(self) -> int: ...
    def __len__(self) -> int: ...
    @property
    def stats(self) -> TableStats: ...
    def memory_bytes(self) -> int: ...
    def lookup(self, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor: ...
    def read(self, row_ids: torch.Tensor) -> torch.Tensor: ...
    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None: ...
    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None: ...
    def expire(self, now_ms: int, max_rows: int = ...,
               prune_below: float | None = None) -> int: ...
    def keep_evicted_ids(self, enabled: bool) -> None: ...
    def clear(self) -> None: ...
    def collect_delta(self) -> TableDelta: ...
    def export_all(self) -> TableDelta: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class SingleTableStore:
    """One table seen as a store of one (its tag is 0): tags are ignored."""

    def __init__(self, table: EmbeddingTable, collective: bool = False) -> None:
        self.table = table
        self.names = [table.name]
        self.dim = table.dim
        self.collective = collective

    def lookup(self, tags: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None = None,
               now_ms: int = 0, train: bool = True) -> torch.Tensor:
        return self.table.lookup(ids, counts, now_ms=now_ms, train=train)

    def read(self, row_ids: torch.Tensor) -> torch.Tensor:
        return self.table.read(row_ids)

    def update(self, row_ids: torch.Tensor, grads: torch.Tensor,
               lr: float | None = None) -> None:
        self.table.update(row_ids, grads, lr)

    def set_rows(self, row_ids: torch.Tensor, values: torch.Tensor) -> None:
        self.table.set_rows(row_ids, values)

    def expire(self, now_ms: int, max_rows: int,
               prune_below: torch.Tensor | None = None) -> int:
        limit = None
        if prune_below is not None and float(prune_below[0].nan_to_num(0.0)) > 0:
            limit = float(prune_below[0])
        return self.table.expire(now_ms, max_rows, prune_below=limit)


class _HasStore(Protocol):
    store: TableStore
    tag: int


def stores_of(tables: Mapping[str, _HasStore]) -> list[tuple[TableStore, list[str]]]:
    """``tables`` by the store holding them: ``(store, names)``, in order of first name."""
    found: dict[int, tuple[TableStore, list[str]]] = {}
    for name, table in tables.items():
        found.setdefault(id(table.store), (table.store, []))[1].append(name)
    return list(found.values())


def sighted_lookup(store: TableStore, tags: torch.Tensor, ids: torch.Tensor,
                   sightings: torch.Tensor, now_ms: int) -> torch.Tensor:
    """Rows of unique ``(tags, ids)`` pairs (-1 where none): a pair sighted at least
    once is looked up for training (its ``sightings`` count for admission, and it
    may get a row), the others only read."""
    sighted = torch.nonzero(sightings > 0).reshape(-1)
    if sighted.numel() == ids.numel():  # (the common case: every pair sighted)
        return store.lookup(tags, ids, sightings, now_ms=now_ms, train=True)
    rows = store.lookup(tags, ids, None, now_ms=now_ms, train=False)
    if sighted.numel():
        rows.index_copy_(0, sighted, store.lookup(
            tags.index_select(0, sighted), ids.index_select(0, sighted),
            sightings.index_select(0, sighted), now_ms=now_ms, train=True))
    return rows


def tagged(parts: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, tags)`` of several tables' ids, as a store takes them: each part's ids
    (``[n]``) with its table's tag, one part after another."""
    return (torch.cat([ids for ids, _ in parts]),
            torch.cat([torch.full_like(ids, tag) for ids, tag in parts]))

"""One stream of parameter versions from trainer ranks that each hold a shard of the rows.

At points all ranks agree on (trainer.rank_loop), every rank collects the delta of
its shard and rank 0 gathers them (:func:`gather_delta`); rank 0's publisher reads
:class:`GatheredParameters`, which merges the deltas gathered since its last round
into one, and answers snapshots from a copy of every rank's rows kept up to date
with them. Dense weights are equal on every rank (all-reduced gradients): rank 0's.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist

from streamrec.model.delta import ParameterDelta, merge_deltas
from streamrec.model.records import EvictedIds, TableDelta, UpsertedRows
from streamrec.trainer.collective import Collective

__all__ = ["GatheredParameters", "gather_delta", "gather_tensor"]

# Deltas kept before they are folded into the copy of the rows (bounds memory
# while no replica asks for a snapshot).
_MAX_UNFOLDED = 32


def gather_tensor(values: torch.Tensor, group: dist.ProcessGroup | None = None
                  ) -> torch.Tensor:
    """Collective: every rank's ``values`` concatenated along dim 0 (lengths may differ)."""
    flat = Collective(True, group).all_gather(values.reshape(-1))
    return flat.reshape(-1, *values.shape[1:])


def gather_delta(local: ParameterDelta, group: dist.ProcessGroup | None = None
                 ) -> ParameterDelta:
    """Collective: the ranks' deltas (or snapshots) of their shards as one, dense from ``local``.

    Every rank passes its own ``collect_delta``/``snapshot`` result, with the
    tables in the same order (each rank's trainer has the same tables).
    """
    tables = [TableDelta(t.table, t.dim,
                         UpsertedRows(gather_tensor(t.upserted.ids, group),
                                      gather_tensor(t.upserted.values, group)),
                         EvictedIds(gather_tensor(t.evicted.ids, group)))
              for t in local.tables]
    return ParameterDelta(version=local.version, base_version=local.base_version,
                          full=local.full, tables=tables, dense=local.dense,
                          event_time_ms=local.event_time_ms,
                          exported_at_ms=local.exported_at_ms, model_spec=local.model_spec)


class GatheredParameters:
    """A :class:`~trainer.sync.publisher.ParameterSource` over the deltas rank 0 gathered.

    Start it from the gathered snapshot of every shard (:meth:`__init__`), then
    :meth:`add` each gathered delta; ``collect_delta`` returns what was added
    since its previous call, ``snapshot`` every live row.
    """

    def __init__(self, snapshot: ParameterDelta) -> None:
        self.lock = threading.RLock()
        self._seq = 0  # deltas added so far; each is numbered seq - 1 -> seq
        self._rows = self._numbered(_as_delta(snapshot))
        self._unfolded: list[ParameterDelta] = []  # added, not yet in ``_rows``
        self._unsent: list[ParameterDelta] = []  # added since the last collect_delta
        self._last = snapshot

    def _numbered(self, delta: ParameterDelta) -> ParameterDelta:
        return ParameterDelta(version=self._seq, base_version=self._seq - 1, full=False,
                              tables=delta.tables, dense=delta.dense,
                              event_time_ms=delta.event_time_ms,
                              exported_at_ms=delta.exported_at_ms, model_spec=delta.model_spec)

    def add(self, delta: ParameterDelta) -> None:
        """One gathered delta (rows touched and ids evicted on every rank since the last)."""
        with self.lock:
            self._seq += 1
            numbered = self._numbered(delta)
            self._unfolded.append(numbered)
            self._unsent.append(numbered)
            self._last = delta
            if len(self._unfolded) > _MAX_UNFOLDED:
                self._fold()

    def _fold(self) -> None:
        if self._unfolded:
            merged = merge_deltas([self._rows, *self._unfolded])
            # Evicted ids that are gone from the copy need not stay.
            tables = [TableDelta(t.table, t.dim, t.upserted) for t in merged.tables]
            self._rows = ParameterDelta(version=merged.version, base_version=merged.version - 1,
                                        full=False, tables=tables, dense=merged.dense,
                                        event_time_ms=merged.event_time_ms,
                                        exported_at_ms=merged.exported_at_ms,
                                        model_spec=merged.model_spec)
            self._unfolded = []

    def collect_delta(self, version: int) -> ParameterDelta:
        with self.lock:
            if self._unsent:
                merged = merge_deltas(self._unsent)
                tables = merged.tables
            else:
                tables = [TableDelta(t.table, t.dim, UpsertedRows.empty(t.dim))
                          for t in self._rows.tables]
            self._unsent = []
            last = self._last
            return ParameterDelta(version=version, base_version=version - 1, full=False,
                                  tables=tables, dense=last.dense,
                                  event_time_ms=last.event_time_ms,
                                  exported_at_ms=last.exported_at_ms, model_spec=last.model_spec)

    def snapshot(self, version: int) -> ParameterDelta:
        with self.lock:
            self._fold()
            last = self._last
            return ParameterDelta(version=version, base_version=0, full=True,
                                  tables=[TableDelta(t.table, t.dim, t.upserted)
                                          for t in self._rows.tables],
                                  dense=last.dense, event_time_ms=last.event_time_ms,
                                  exported_at_ms=last.exported_at_ms, model_spec=last.model_spec)


def _as_delta(snapshot: ParameterDelta) -> ParameterDelta:
    """A full snapshot's rows as an incremental delta (what :func:`merge_deltas` takes)."""
    return ParameterDelta(version=0, base_version=-1, full=False, tables=snapshot.tables,
                          dense=snapshot.dense, event_time_ms=snapshot.event_time_ms,
                          exported_at_ms=snapshot.exported_at_ms, model_spec=snapshot.model_spec)

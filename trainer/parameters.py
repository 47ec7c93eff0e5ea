"""The trainer's parameters as the publisher reads them: deltas and snapshots.

:class:`TrainerParameters` is the :class:`~streamrec.trainer.sync.publisher.ParameterSource`
over an :class:`OnlineTrainer`; its ``lock`` is the trainer's, which the
publisher holds across a delta and a snapshot so both describe one state.
"""

from __future__ import annotations

import threading
import time

from streamrec.model.delta import ParameterDelta
from streamrec.model.records import DenseParameters, TableDelta, UpsertedRows
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["TrainerParameters"]


class TrainerParameters:
    """Versioned deltas and snapshots of ``trainer``'s tables and dense weights."""

    def __init__(self, trainer: OnlineTrainer) -> None:
        self.trainer = trainer

    @property
    def lock(self) -> threading.RLock:
        return self.trainer.lock

    def _sync_dense(self) -> DenseParameters:
        # Serving applies the same OptEmbed mask, so it needs the thresholds.
        return DenseParameters(self.trainer.dense_state(),
                               self.trainer.embeddings.threshold_state())

    def _served(self, delta: TableDelta) -> TableDelta:
        """``delta`` as replicas need it: a wide term's rows as their weight alone
        (the Adagrad sum beside it only trains), half the bytes to send and apply."""
        if delta.table not in self.trainer.wide.tables:
            return delta
        rows = delta.upserted
        return TableDelta(delta.table, 1, UpsertedRows(rows.ids, rows.values[:, :1].contiguous()),
                          delta.evicted)

    def collect_delta(self, version: int) -> ParameterDelta:
        """Rows touched and ids evicted since the previous call, plus dense weights."""
        t = self.trainer
        with t.lock:
            tables = [self._served(table.collect_delta()) for table in t.tables.values()]
            return ParameterDelta(
                version=version, base_version=version - 1, full=False, tables=tables,
                dense=self._sync_dense(), event_time_ms=t.event_time_ms,
                exported_at_ms=int(time.time() * 1000), model_spec=t.spec)

    def snapshot(self, version: int) -> ParameterDelta:
        """Every live row and the dense weights, as version ``version``."""
        t = self.trainer
        with t.lock:
            tables = [self._served(table.export_all()) for table in t.tables.values()]
            return ParameterDelta(
                version=version, base_version=0, full=True, tables=tables,
                dense=self._sync_dense(), event_time_ms=t.event_time_ms,
                exported_at_ms=int(time.time() * 1000), model_spec=t.spec)

"""The trained model and the deltas the serving benchmarks push to a replica."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["DeltaChain", "trained_snapshot"]


def trained_snapshot(events: int, deltas: int, overrides: dict[str, str] | None = None
                     ) -> tuple[Any, list[Any]]:
    """A model trained on ``events`` synthetic events: its snapshot (version 1), then
    ``deltas`` deltas (versions 2, 3, ...) of one training batch each. ``overrides``:
    config settings beyond the benchmarks' features (``{"model.wide_terms": ""}``)."""
    import torch

    from streamrec.config import load_config
    from streamrec.ingest.batch import Batcher
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.parameters import TrainerParameters
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price", **(overrides or {})})
    trainer = OnlineTrainer.from_config(config)
    parameters = TrainerParameters(trainer)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    size = config.trainer.batch_size
    stream = SyntheticStream(default()).events(events + deltas * size)
    learned = [next(stream) for _ in range(events)]
    for start in range(0, len(learned), size):
        trainer.train_batch(batcher.build(learned[start:start + size]))
    snapshot = parameters.snapshot(1)
    parameters.collect_delta(1)  # (a snapshot leaves the rows it holds marked as changed)
    # What the trainer changes between syncs, one step each.
    changes = []
    for version in range(2, 2 + deltas):
        trainer.train_batch(batcher.build([next(stream) for _ in range(size)]))
        changes.append(parameters.collect_delta(version))
    return snapshot, changes


class DeltaChain:
    """Pushes a snapshot and its deltas again and again, each time above every
    version pushed before (a replica refuses to go back)."""

    def __init__(self, sink: Any, snapshot: Any) -> None:
        self.sink, self.snapshot = sink, snapshot
        self.base = 0  # versions pushed so far lie below base + 1

    def restart(self) -> None:
        """The snapshot again, as version ``base + 1`` of a new chain."""
        self.base += 1000
        self.sink.push(dataclasses.replace(self.snapshot, version=self.base + 1))

    def push(self, delta: Any) -> None:
        """``delta`` (made on the snapshot's version chain) in the current chain."""
        self.sink.push(dataclasses.replace(delta, version=self.base + delta.version,
                                           base_version=self.base + delta.base_version))

"""A small trained model for tests that need real parameters."""

from __future__ import annotations

import torch

from streamrec.ingest.batch import Batcher
from streamrec.config import load_config
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["small_trainer"]


def small_trainer(events: int = 640) -> OnlineTrainer:
    """A trainer (user, item, category ids; price) after ``events`` synthetic events."""
    torch.set_num_threads(1)
    cfg = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id,category",
                                         "model.dense_features": "price",
                                         "trainer.batch_size": "128"})
    trainer = OnlineTrainer.from_config(cfg)
    batcher = Batcher(cfg.model.sparse_features, cfg.model.dense_features)
    stream = list(SyntheticStream(default()).events(events))
    for start in range(0, len(stream), 128):
        trainer.train_batch(batcher.build(stream[start:start + 128]))
    return trainer

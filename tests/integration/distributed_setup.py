"""The configuration shared by the 2-rank run and its single-rank reference."""

from __future__ import annotations

import os

from streamrec.config import AppConfig, load_config

GLOBAL_BATCH = 256
STEPS = int(os.environ.get("DIST_STEPS", "60"))


def config() -> AppConfig:
    # min_count and a short TTL put the frequency filter and expiry in play:
    # the synthetic stream spans 200 events per second of event time.
    return load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country",
        "model.dense_features": "price",
        "model.history_features": "",  # not distributed yet
        "table_defaults.min_count": "2",
        "table_defaults.ttl_s": "20",
        "trainer.batch_size": str(GLOBAL_BATCH),
        # Pinned, not the default: Adam turns float summation-order noise in
        # near-zero gradients into steps of up to ~lr, and the test's 1e-4
        # tolerance on dense weights is set for this lr.
        "trainer.dense_lr": "0.01",
    })

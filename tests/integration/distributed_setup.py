"""The configuration shared by the 2-rank run and its single-rank reference."""

from __future__ import annotations

import os

import torch

from streamrec.config import AppConfig, load_config

GLOBAL_BATCH = 256
STEPS = int(os.environ.get("DIST_STEPS", "60"))


def bounds(step: int, world: int) -> list[int]:
    """Where the global batch of ``step`` is cut between ranks: uneven, now and then empty.

    Real streams do not split evenly (partitions differ in rate), and an
    uneven split must train like one process too.
    """
    cuts = sorted((step * 53 * (r + 1)) % (GLOBAL_BATCH + 1) for r in range(world - 1))
    return [0, *cuts, GLOBAL_BATCH]


def fake_negatives(events: list) -> torch.Tensor:
    """Which examples count as fake negatives (ES-DFM's weighting): every 7th negative,
    as the loop marks them (``[B]`` bool, empty for an empty slice)."""
    return torch.tensor([e.label == 0 and int(e.event_id[1:]) % 7 == 0 for e in events],
                        dtype=torch.bool)


def config() -> AppConfig:
    # min_count and a short TTL put the frequency filter and expiry in play:
    # the synthetic stream spans 200 events per second of event time.
    return load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country",
        "model.dense_features": "price",
        "model.history_features": "user_id,item_id",  # (the default)
        "model.in_batch_terms": "",
        "model.wide_terms": "user_id,item_id,user_id*category,category*country",
        "table_defaults.min_count": "2",
        "table_defaults.ttl_s": "20",
        "trainer.batch_size": str(GLOBAL_BATCH),
        # Pinned, not the default: Adam turns float summation-order noise in
        # near-zero gradients into steps of up to ~lr, and the test's
        # tolerances (test_distributed.py) are set for this lr.
        "trainer.dense_lr": "0.01",
    })

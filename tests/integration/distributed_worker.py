"""One rank of the 2-rank training run in test_distributed.py (started by torchrun).

Each rank trains on its slice of every global batch of the same synthetic
stream (slices of varying, uneven sizes, see ``bounds``), then writes its shard of every table and the dense weights to
``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import itertools
import sys

import torch
import torch.distributed as dist

from streamrec.ingest.batch import Batcher
from streamrec.synthetic import SyntheticStream, default
from tests.integration.distributed_setup import GLOBAL_BATCH, STEPS, bounds, config, \
    fake_negatives
from streamrec.trainer.trainer import OnlineTrainer


def _count_collectives() -> list[int]:
    """Counts every torch.distributed collective call from now on (one counter)."""
    calls = [0]
    for name in ("all_reduce", "all_gather", "all_to_all_single", "broadcast", "gather"):
        original = getattr(dist, name)

        def counted(*args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            calls[0] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    return calls


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    calls = _count_collectives()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = config()
    trainer = OnlineTrainer.from_config(cfg, distributed=True)
    batcher = Batcher(cfg.model.sparse_features, cfg.model.dense_features)
    events = SyntheticStream(default()).events(GLOBAL_BATCH * STEPS)
    for step in range(STEPS):
        chunk = list(itertools.islice(events, GLOBAL_BATCH))
        cut = bounds(step, world)
        # Every rank knows every slice's size, as the ranks' loop does.
        mine = chunk[cut[rank]:cut[rank + 1]]
        with trainer.collective.slices([b - a for a, b in zip(cut, cut[1:])]):
            trainer.train_batch(batcher.build(mine), fake_negatives(mine), 0.5)
        if step == 0:
            calls[0] = 0  # (the first step also agrees on the initial bias)
    tables = {name: (rows.ids, rows.values) for name, rows in
              ((n, t.export_all().upserted) for n, t in trainer.tables.items())}
    torch.save({"tables": tables, "dense": trainer.model.state_dict(),
                "evicted": {n: t.stats.evicted for n, t in trainer.tables.items()},
                "collectives_per_step": calls[0] / (STEPS - 1)},
               f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

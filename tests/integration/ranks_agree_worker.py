"""One rank of test_ranks.py's resume-step test (started by torchrun).

Rank 0 holds checkpoints of steps 10 and 20, rank 1 of step 10 only (killed
while rank 0 wrote step 20); both agree, then report the step each would load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.ranks import Ranks, agree_on_checkpoint, rank_directory


def main(root: str) -> None:
    ranks = Ranks.from_env()
    assert ranks is not None
    ranks.join()
    checkpointer = Checkpointer(rank_directory(root, ranks.rank))
    for step in (10, 20) if ranks.rank == 0 else (10,):
        checkpointer.save(step, {}, {("events", ranks.rank): step}, 0)
    dist.barrier()
    agree_on_checkpoint(checkpointer, ranks)
    latest = checkpointer.latest()
    assert latest is not None
    (Path(root) / f"loads{ranks.rank}").write_text(str(latest.step))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

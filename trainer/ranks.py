"""Trainer ranks: `streamrec train` as several processes started by torchrun.

:class:`Ranks` reads torchrun's environment and joins the gloo process group;
each rank keeps its checkpoints in ``<checkpoint_dir>/rank<r>``, and
:func:`agree_on_checkpoint` has every rank resume from the same step. How the
ranks share the stream and the tables: docs/ranks.md.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from streamrec.errors import CheckpointError, ConfigError
from streamrec.trainer.checkpoint import Checkpointer, checkpoint_name
from streamrec.trainer.progressive import ProgressiveMetrics

__all__ = ["Ranks", "agree_on_checkpoint", "common_step", "global_progress", "rank_directory",
           "refuse_rank_directories"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
_RANK_DIR = re.compile(r"^rank\d+$")
# What a checkpoint a rank will not resume from is renamed to (kept, never read).
_ABANDONED = ".abandoned"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the trainer ranks (torchrun's ``RANK``, ``WORLD_SIZE``...)."""

    rank: int
    world: int
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world < 2:
            raise ConfigError(f"WORLD_SIZE={self.world}: trainer ranks need at least 2")
        if not 0 <= self.rank < self.world:
            raise ConfigError(f"RANK={self.rank}: must be in [0, WORLD_SIZE={self.world})")
        if self.local_rank < 0:
            raise ConfigError(f"LOCAL_RANK={self.local_rank}: must be >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks | None:
        """The ranks torchrun describes in ``env``; None for a single process (no
        ``WORLD_SIZE``, or 1)."""
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            if world <= 1:
                return None
            return cls(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
        except KeyError as e:
            raise ConfigError(f"WORLD_SIZE is set but {e.args[0]} is not: start the ranks "
                              f"with torchrun") from None
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK: {e}") from None

    @property
    def share(self) -> tuple[int, int]:
        """``(rank, world)``: which partitions this rank reads (ingest.kafka_source)."""
        return self.rank, self.world

    def join(self) -> None:
        """Join the gloo process group (MASTER_ADDR/MASTER_PORT from torchrun)."""
        if dist.is_initialized():
            return
        store, _, _ = next(dist.rendezvous("env://", self.rank, self.world))
        # Each restart of the group under its own keys: gloo's peers otherwise
        # find the addresses of the killed round's processes in torchrun's store
        # and time out connecting to them.
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("gloo", store=dist.PrefixStore(f"streamrec/{restart}", store),
                                rank=self.rank, world_size=self.world)


def rank_directory(checkpoint_dir: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` keeps its checkpoints and its learned-offsets ledger."""
    return Path(checkpoint_dir) / f"rank{rank}"


def refuse_rank_directories(checkpoint_dir: str | os.PathLike[str]) -> None:
    """A single trainer refuses a directory of ranks' checkpoints (it would start afresh)."""
    root = Path(checkpoint_dir)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and _RANK_DIR.match(p.name)) \
        if root.is_dir() else []
    if found:
        raise CheckpointError(
            f"trainer.checkpoint_dir {str(root)!r} holds the checkpoints of {len(found)} trainer "
            f"ranks ({', '.join(found)}): resume with as many ranks (torchrun --nproc-per-node "
            f"{len(found)}), or set another checkpoint_dir to start afresh")


def _steps(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def agree_on_checkpoint(checkpointer: Checkpointer, ranks: Ranks,
                        group: dist.ProcessGroup | None = None) -> None:
    """Collective: leave every rank's newest checkpoint at the same step.

    Ranks write a checkpoint at the same step, but a rank killed while the
    others wrote theirs lacks the newest: every rank then resumes from the
    newest step all of them hold, and newer files are renamed aside
    (``*.abandoned``). Raises :class:`CheckpointError` when some ranks hold
    checkpoints and others none, or no step is common to all.
    """
    keep = checkpointer.keep + 1
    mine = _steps(checkpointer.directory)[-keep:]
    local = torch.full((keep,), -1, dtype=torch.int64)
    local[: len(mine)] = torch.tensor(mine, dtype=torch.int64)
    every = [torch.empty_like(local) for _ in range(ranks.world)]
    dist.all_gather(every, local, group=group)
    held = [{int(s) for s in t.tolist() if s >= 0} for t in every]
    step = common_step(held, checkpointer.directory.parent)
    if step is None:
        return
    for newer in [s for s in mine if s > step]:
        path = checkpointer.directory / checkpoint_name(newer)
        log.warning("rank %d: %s is newer than the step every rank holds (%d): set aside",
                    ranks.rank, path.name, step)
        path.rename(path.with_name(path.name + _ABANDONED))


def common_step(held: list[set[int]], where: Path) -> int | None:
    """The newest step every rank holds a checkpoint of (``held``: per rank), None when
    no rank holds any; raises :class:`CheckpointError` when only some do or none is common."""
    if not any(held):
        return None
    if not all(held):
        empty = [r for r, steps in enumerate(held) if not steps]
        raise CheckpointError(
            f"trainer ranks {empty} have no checkpoint in {where} while the others do: "
            f"restart with the number of ranks the checkpoints were written by, or set "
            f"another trainer.checkpoint_dir to start afresh")
    common = set.intersection(*held)
    if not common:
        raise CheckpointError(
            f"the trainer ranks' checkpoints in {where} share no step "
            f"({[sorted(s) for s in held]}): they were not written by one run")
    return max(common)


def global_progress(progress: ProgressiveMetrics, group: dist.ProcessGroup | None = None
                    ) -> dict[str, float]:
    """Collective: the progressive figures over every rank's examples (the windowed ones
    are left out: each rank keeps only its own recent examples)."""
    state = progress.state_dict()
    sums = torch.tensor([state["logloss_sum"], state["weight_sum"], state["predicted_sum"],
                         state["clicked_sum"], state["examples"], state["positives"]],
                        dtype=torch.float64)
    packed = torch.cat([state["pos_hist"], state["neg_hist"], sums])  # type: ignore[list-item]
    dist.all_reduce(packed, group=group)
    bins = progress.bins
    merged = ProgressiveMetrics(window=1, bins=bins)
    total = packed[2 * bins:].tolist()
    merged.load_state_dict({
        "bins": bins, "pos_hist": packed[:bins], "neg_hist": packed[bins:2 * bins],
        "logloss_sum": total[0], "weight_sum": total[1], "predicted_sum": total[2],
        "clicked_sum": total[3], "examples": int(total[4]), "positives": total[5],
        "recent": torch.zeros((3, 0), dtype=torch.float64)})
    return {k: v for k, v in merged.snapshot().items() if not k.startswith("window_")}

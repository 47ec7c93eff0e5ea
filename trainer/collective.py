"""The collectives of a trainer's ranks: sums, maxima and gathers over one process group.

With one process (``distributed=False``) every operation returns its input:
the step's code is the same for one rank or many.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

__all__ = ["Collective"]


class Collective:
    """Reductions over the ranks of ``group`` (the default group when None)."""

    def __init__(self, distributed: bool = False,
                 group: dist.ProcessGroup | None = None) -> None:
        self.distributed = distributed
        self.group = group
        self._slices: list[int] | None = None  # see slices()

    def world_size(self) -> int:
        return dist.get_world_size(self.group) if self.distributed else 1

    def all_reduce(self, tensor: torch.Tensor,
                   op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        """``tensor`` reduced in place over every rank, and returned."""
        if self.distributed:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    @contextlib.contextmanager
    def slices(self, sizes: list[int]) -> Iterator[None]:
        """Within: every rank's slice of the batch is known (``sizes``, by rank), and
        :meth:`all_gather` of per-example values needs no exchange of lengths."""
        self._slices = list(sizes)
        try:
            yield
        finally:
            self._slices = None

    def slice_sizes(self, n: int) -> list[int]:
        """Every rank's slice size, this rank's being ``n``: known within
        :meth:`slices`, else gathered (one collective)."""
        if not self.distributed:
            return [n]
        if self._slices is not None:
            return list(self._slices)
        gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size())]
        dist.all_gather(gathered, torch.tensor([n]), group=self.group)
        return [int(g) for g in gathered]

    def rank(self) -> int:
        return dist.get_rank(self.group) if self.distributed else 0

    def all_gather(self, values: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """``values`` of every rank, concatenated along the first dimension (slices may
        differ in length). ``sizes``: every rank's length, when the caller knows them;
        else those of :meth:`slices`, else they are gathered first."""
        if not self.distributed:
            return values
        world = dist.get_world_size(self.group)
        if sizes is None and self._slices is not None:
            sizes = self._slices
        if sizes is not None:
            mine = sizes[dist.get_rank(self.group)]
            if values.shape[0] != mine:
                raise RuntimeError(f"all_gather of {values.shape[0]} values on a rank whose "
                                   f"slice holds {mine}")
        else:
            sizes = self.slice_sizes(values.shape[0])
        longest = max(sizes)
        padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype)
        padded[: values.shape[0]] = values
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    def average_gradients(self, parameters: Iterable[torch.Tensor],
                          sums: torch.Tensor) -> torch.Tensor:
        """Every parameter's gradient averaged over the ranks (zero where a rank has none),
        and the float vector ``sums`` summed over them in the same call (returned)."""
        if not self.distributed:
            return sums
        params = list(parameters)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # One all-reduce for every gradient and the step's scalars (each call
        # costs a round trip between the ranks, per step).
        flat = torch.cat([*(p.grad.reshape(-1) for p in params),  # type: ignore[union-attr]
                          sums.reshape(-1).to(torch.float32)])
        self.all_reduce(flat)
        grads, summed = flat.split([flat.numel() - sums.numel(), sums.numel()])
        grads.div_(self.world_size())
        for p, part in zip(params, grads.split([p.numel() for p in params])):
            p.grad.copy_(part.view_as(p))  # type: ignore[union-attr]
        return summed.to(sums.dtype)

"""The built rows of the training loop's pending examples, kept until their step.

The loop batches every released example once, to store its outcome in the
history counts (``OnlineTrainer.observe_history``) or to score impressions
beside it; the step takes those rows instead of batching the examples again.
"""

from __future__ import annotations

import collections

import torch

from streamrec.ingest.batch import Batch

__all__ = ["PendingRows"]


class PendingRows:
    """A queue of examples' rows, oldest first: added a batch at a time, taken any number.

    Each batch may carry the ``[B, H, 2]`` history counts its examples learn
    with (None: the step computes them); every batch added carries them or
    none does.
    """

    def __init__(self) -> None:
        self._parts: collections.deque[tuple[Batch, torch.Tensor | None]] = collections.deque()
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, batch: Batch, counts: torch.Tensor | None) -> None:
        """Append ``batch``'s rows (and their ``counts``) after those held."""
        if not len(batch):
            return
        if counts is not None and counts.shape[0] != len(batch):
            raise ValueError(f"counts: {counts.shape[0]} rows for a batch of {len(batch)}")
        if self._parts and (self._parts[0][1] is None) != (counts is None):
            raise ValueError("counts: given for some batches held and not for others")
        self._parts.append((batch, counts))
        self._rows += len(batch)

    def take(self, n: int) -> tuple[Batch, torch.Tensor | None]:
        """The ``n`` oldest rows as one batch, and their counts; they leave the queue."""
        if not 0 < n <= self._rows:
            raise ValueError(f"n={n}: must be in [1, {self._rows}] (the rows held)")
        batches, counts = [], []
        while n:
            batch, held = self._parts.popleft()
            if len(batch) > n:  # the rest stays first in line
                rest = torch.arange(n, len(batch))
                self._parts.appendleft((batch.rows(rest), None if held is None else held[n:]))
                head = torch.arange(n)
                batch, held = batch.rows(head), None if held is None else held[:n]
            batches.append(batch)
            counts.append(held)
            n -= len(batch)
            self._rows -= len(batch)
        if counts[0] is None:
            return Batch.cat(batches), None
        return Batch.cat(batches), counts[0] if len(counts) == 1 else torch.cat(counts)

"""The built rows of the training loop's pending examples, kept until their step.

The loop batches every released example once, to store its outcome in the
history counts and wide terms (``OnlineTrainer.observe``) or to score
impressions beside it; the step takes those rows instead of batching the
examples again, with the counts and wide logits observed then.
"""

from __future__ import annotations

import collections

import torch

from streamrec.ingest.batch import Batch

__all__ = ["PendingRows"]

# Per example, what it learns with: ([B, H, 2] history counts, [B] wide logits).
Observed = tuple[torch.Tensor, torch.Tensor]


class PendingRows:
    """A queue of examples' rows, oldest first: added a batch at a time, taken any number.

    Each batch may carry what its examples learn with (``Observed``; None:
    the step computes it); every batch added carries it or none does.
    """

    def __init__(self) -> None:
        self._parts: collections.deque[tuple[Batch, Observed | None]] = collections.deque()
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, batch: Batch, observed: Observed | None) -> None:
        """Append ``batch``'s rows (and what they were ``observed`` with) after those held."""
        if not len(batch):
            return
        if observed is not None and any(t.shape[0] != len(batch) for t in observed):
            raise ValueError(f"observed: {[t.shape[0] for t in observed]} rows for a batch "
                             f"of {len(batch)}")
        if self._parts and (self._parts[0][1] is None) != (observed is None):
            raise ValueError("observed: given for some batches held and not for others")
        self._parts.append((batch, observed))
        self._rows += len(batch)

    def take(self, n: int) -> tuple[Batch, torch.Tensor | None, torch.Tensor | None]:
        """The ``n`` oldest rows as one batch, and their counts and wide logits
        (None where not observed); they leave the queue."""
        if not 0 < n <= self._rows:
            raise ValueError(f"n={n}: must be in [1, {self._rows}] (the rows held)")
        batches: list[Batch] = []
        held: list[Observed | None] = []
        while n:
            batch, observed = self._parts.popleft()
            if len(batch) > n:  # the rest stays first in line
                rest = torch.arange(n, len(batch))
                self._parts.appendleft((batch.rows(rest), None if observed is None else
                                        (observed[0][n:], observed[1][n:])))
                batch = batch.rows(torch.arange(n))
                observed = None if observed is None else (observed[0][:n], observed[1][:n])
            batches.append(batch)
            held.append(observed)
            n -= len(batch)
            self._rows -= len(batch)
        if held[0] is None:
            return Batch.cat(batches), None, None
        counts = [h[0] for h in held if h is not None]
        wide = [h[1] for h in held if h is not None]
        if len(held) == 1:
            return Batch.cat(batches), counts[0], wide[0]
        return Batch.cat(batches), torch.cat(counts), torch.cat(wide)

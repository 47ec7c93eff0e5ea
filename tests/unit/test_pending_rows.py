"""The training loop's pending rows: batched once on arrival, taken in order by the steps."""

from __future__ import annotations

import pytest
import torch

from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.trainer.pending import PendingRows


def batch_of(users: range):  # type: ignore[no-untyped-def]
    events = [Event("example", u, 0, u, features={"tag": ("a",) * (u % 3)}, label=float(u % 2))
              for u in users]
    return Batcher(["user_id", "tag"], []).build(events)


def test_rows_leave_in_the_order_they_came_whatever_the_sizes_taken() -> None:
    rows = PendingRows()
    for a, b in ((0, 5), (5, 6), (6, 20)):
        ids = torch.arange(a, b).float()
        rows.add(batch_of(range(a, b)), (ids.view(-1, 1, 1).expand(-1, 2, 2), -ids))
    assert len(rows) == 20
    taken = []
    for n in (3, 4, 12, 1):
        batch, counts, wide = rows.take(n)
        assert len(batch) == n and counts is not None and counts.shape == (n, 2, 2)
        assert batch.sparse["user_id"].values().tolist() == counts[:, 0, 0].long().tolist()
        taken += batch.sparse["user_id"].values().tolist()
    assert taken == list(range(20)) and len(rows) == 0


def test_taking_more_rows_than_held_or_mixing_counts_is_refused() -> None:
    rows = PendingRows()
    rows.add(batch_of(range(4)), None)
    with pytest.raises(ValueError, match="observed: given for some"):
        rows.add(batch_of(range(4, 6)), (torch.zeros(2, 1, 2), torch.zeros(2)))
    with pytest.raises(ValueError, match=r"observed: \[3, 3\] rows for a batch of 2"):
        PendingRows().add(batch_of(range(2)), (torch.zeros(3, 1, 2), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"n=5: must be in \[1, 4\]"):
        rows.take(5)
    assert rows.take(4)[1] is None

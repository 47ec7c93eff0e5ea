"""OptEmbed row pruning in the embedding collection: STE mask, regulariser, freeing."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.config import TableConfig
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.tables.table import DynamicEmbeddingTable

DIM = 4


def kjt(ids: list[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=["f"], values=torch.tensor(ids),
                             lengths=torch.ones(len(ids), dtype=torch.int32), stride=len(ids))


def collection(alpha: float) -> DynamicEmbeddingCollection:
    table = DynamicEmbeddingTable("f", DIM, TableConfig(initial_capacity=16, init_std=0.1))
    return DynamicEmbeddingCollection({"f": table}, {"f": alpha})


def test_rows_under_the_threshold_read_zero_but_still_get_gradients() -> None:
    ec = collection(alpha=1e-3)
    with torch.no_grad():
        ec.thresholds.fill_(1e6)
    pooled = ec.forward(kjt([1, 2]), now_ms=1)
    assert bool((pooled == 0).all())
    pooled.sum().backward()
    # Straight-through: the threshold and the rows both receive gradients.
    assert ec.thresholds.grad is not None and float(ec.thresholds.grad.abs().sum()) > 0
    table = ec.tables["f"]
    before = table.read(table.lookup(torch.tensor([1, 2]), train=False)).clone()
    ec.step()
    after = table.read(table.lookup(torch.tensor([1, 2]), train=False))
    assert not torch.equal(before, after)


def test_rows_above_the_threshold_pass_unchanged() -> None:
    ec = collection(alpha=1e-3)
    pooled = ec.forward(kjt([1]), now_ms=1)
    table = ec.tables["f"]
    assert torch.allclose(pooled[0, 0], table.read(table.lookup(torch.tensor([1]), train=False))[0])


def test_regulariser_raises_thresholds_and_the_sweep_frees_pruned_rows() -> None:
    ec = collection(alpha=1.0)
    ec.forward(kjt(list(range(20))), now_ms=1)
    ec.step()
    optimizer = torch.optim.Adam(ec.parameters(), lr=0.05)
    for _ in range(40):
        optimizer.zero_grad()
        ec.regularizer().backward()
        optimizer.step()
    t = float(ec.thresholds.detach()[0])
    assert t > 1.0  # initial rows have L1 norm ~0.3 (4 dims, std 0.1)
    table = ec.tables["f"]
    grace_ms = int(table.config.prune_grace_s * 1000)
    assert ec.expire(now_ms=grace_ms) == 0  # admitted at 1: still in their grace period
    assert ec.expire(now_ms=1 + grace_ms) == 20
    assert len(table) == 0 and table.stats.pruned == 20


def test_a_new_id_under_the_threshold_can_still_learn_its_way_out() -> None:
    # Once the threshold is above a fresh row's norm, every new id reads zero
    # at first; its row must still be trained (and kept through the grace
    # period), or no new id could ever be learned again.
    ec = collection(alpha=1e-3)
    with torch.no_grad():
        ec.thresholds.fill_(1.0)  # fresh rows: L1 norm ~0.3
    table = ec.tables["f"]
    for step in range(200):
        pooled = ec.forward(kjt([7]), now_ms=1 + step)
        (-pooled.sum()).backward()  # the loss wants this row large
        ec.step()
        ec.expire(now_ms=1 + step)
    row = table.read(table.lookup(torch.tensor([7]), train=False))
    assert float(row.abs().sum()) > 1.0
    assert bool((ec.forward(kjt([7]), now_ms=201, train=False) != 0).any())


def test_no_pruning_means_no_parameters_and_zero_regulariser() -> None:
    ec = collection(alpha=0.0)
    assert ec.parameters() == []
    assert float(ec.regularizer()) == 0.0

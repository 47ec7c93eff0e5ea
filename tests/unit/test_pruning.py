"""OptEmbed row pruning in the embedding collection: STE mask, regulariser, freeing."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.config import TableConfig
from trainer.embedding import DynamicEmbeddingCollection
from trainer.tables.table import DynamicEmbeddingTable

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
    assert ec.expire(now_ms=1) == 20
    assert len(table) == 0 and table.stats.pruned == 20


def test_no_pruning_means_no_parameters_and_zero_regulariser() -> None:
    ec = collection(alpha=0.0)
    assert ec.parameters() == []
    assert float(ec.regularizer()) == 0.0

"""The hand-written pieces of the training step agree with the textbook versions."""

from __future__ import annotations

import pytest
import torch

from trainer.model import fm_interaction
from trainer.tables.sort import stable_argsort, unique

INT64 = torch.iinfo(torch.int64)


def _key_sets() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.empty(0, dtype=torch.int64),
        torch.tensor([7]),
        torch.tensor([3, 3, 3, 3]),
        torch.randint(0, 50, (5000,), generator=g),            # many repeats
        torch.randint(-(2**62), 2**62, (3000,), generator=g),  # hashed ids: huge range
        torch.tensor([INT64.max, INT64.min, 0, -1, INT64.max, INT64.min]),
        torch.tensor([65535, 0, 65535, 1, 0, 65535]),  # the 16-bit radix sort's range
        torch.tensor([65536, 0, 65536, 1, 0]),         # just beyond it
    ]


@pytest.mark.parametrize("keys", _key_sets(), ids=lambda k: f"n={k.numel()}")
def test_unique_matches_torch(keys: torch.Tensor) -> None:
    want = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    got = unique(keys)
    for w, g in zip(want, got):
        assert g.dtype == torch.int64
        assert torch.equal(w, g)


@pytest.mark.parametrize("keys", _key_sets(), ids=lambda k: f"n={k.numel()}")
def test_stable_argsort_keeps_order_of_equal_keys(keys: torch.Tensor) -> None:
    assert torch.equal(stable_argsort(keys), torch.sort(keys, stable=True).indices)


def _fm_reference(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1)).sum(dim=1)


def test_fm_interaction_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    # A strided view, as the model passes it (the rows' last column sliced off).
    rows = torch.randn(6, 4, 5, dtype=torch.float64, generator=g)
    v = rows[..., :-1].requires_grad_(True)
    assert torch.allclose(fm_interaction(v), _fm_reference(v))
    assert torch.autograd.gradcheck(fm_interaction, (v,))
    # The pairwise definition: sum over i < j of <v_i, v_j>.
    pairs = sum((v[:, i] * v[:, j]).sum(dim=1) for i in range(4) for j in range(i + 1, 4))
    assert torch.allclose(fm_interaction(v), pairs)

"""The hand-written pieces of the training step agree with the textbook versions."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.ingest.batch import Batcher
from streamrec import native
from streamrec.config import ModelConfig, TableConfig, load_config
from streamrec.synthetic import PRESETS, SyntheticStream
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.ctr import CTRModel, fm_interaction
from streamrec.model.history import history_inputs
from streamrec.model.tables.index import IdIndex
from streamrec.model.tables.rows import id_normal
from streamrec.model.tables.sort import stable_argsort, unique
from streamrec.trainer.trainer import OnlineTrainer
from tests import reference_ops
from tests.reference_ops import python_paths

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


# The operators (streamrec/native) against the reference implementations -----------


def test_importing_streamrec_native_registers_the_operators() -> None:
    for name in reference_ops.OPS:
        assert hasattr(torch.ops.streamrec, name), name
    with pytest.raises(RuntimeError, match="float32 or float64"):
        native.gather_rows(torch.zeros(3, 2, dtype=torch.int64), torch.tensor([0]))


def _fm_model(dense: list[str], history: list[str]) -> CTRModel:
    model = CTRModel(ModelConfig(sparse_features=["user_id", "item_id", "category"],
                                 dense_features=dense, embedding_dim=8, hidden=[],
                                 history_features=history))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _layerwise(model: CTRModel, pooled: torch.Tensor, dense: torch.Tensor,
               counts: torch.Tensor | None) -> torch.Tensor:
    """CTRModel.forward's general path (as with hidden layers) for a model without them."""
    if counts is not None:
        dense = torch.cat([dense, history_inputs(counts, model.prior_ctr,
                                                 model.config.history_strength)], dim=1)
    factors = pooled[..., :-1]
    if model.dense_proj is not None:
        factors = torch.cat([factors, model.dense_proj(dense).unsqueeze(1)], dim=1)
    deep = model._first_layer(factors.flatten(1), dense).squeeze(1)
    return model.bias + pooled[..., -1].sum(dim=1) + fm_interaction(factors) + deep


@pytest.mark.parametrize("layout", ["fields-first", "examples-first"])
@pytest.mark.parametrize("dense", [[], ["price"]])
@pytest.mark.parametrize("history", [[], ["user_id"]])
def test_fm_kernels_match_the_layerwise_model(layout: str, dense: list[str],
                                              history: list[str]) -> None:
    model = _fm_model(dense, history)
    g = torch.Generator().manual_seed(3)
    batch = 37
    if layout == "fields-first":  # as the embedding collection pools a table group
        pooled = torch.randn(3, batch, 9, generator=g).transpose(0, 1)
    else:
        pooled = torch.randn(batch, 3, 9, generator=g)
    pooled.requires_grad_(True)
    dense_x = torch.randn(batch, len(dense), generator=g)
    counts = torch.rand(batch, len(history), 2, generator=g) * 20 if history else None
    upstream = torch.randn(batch, generator=g)
    inputs = [pooled, *model.parameters()]

    def run(forward: Callable[..., torch.Tensor]
            ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        out = forward(pooled, dense_x, counts)
        return out, torch.autograd.grad(out, inputs, upstream, allow_unused=True)

    fast, fast_grads = run(model)
    reference, reference_grads = run(functools.partial(_layerwise, model))
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(fast_grads, reference_grads):
        assert (got is None) == (want is None)
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fm_kernels_on_an_empty_slice_give_zero_weight_gradients() -> None:
    # A rank's slice of a global batch may be empty; its (all-reduced)
    # gradients must then be zeros, not whatever memory the buffers held.
    model = _fm_model(["price"], [])
    for _ in range(3):
        out = model(torch.randn(0, 3, 9), torch.randn(0, 1))
        out.sum().backward()
        for p in model.parameters():
            assert p.grad is None or not p.grad.any()
        model.zero_grad(set_to_none=False)
        for p in model.parameters():  # garbage in the buffers the kernel reuses
            p.grad = torch.full_like(p, 7.0)
        model.zero_grad()


def test_history_prefix_kernel_matches_the_sorting_version() -> None:
    g = torch.Generator().manual_seed(4)
    stored = torch.randint(0, 9, (50, 2), generator=g).float()
    inverse = torch.randint(0, 50, (3000,), generator=g)
    y = torch.randint(0, 2, (3000,), generator=g).float()
    before, totals = native.history_prefix(stored, inverse, y)
    want_before, want_totals = reference_ops.history_prefix(stored, inverse, y)
    assert torch.equal(before, want_before)
    assert torch.equal(totals, want_totals)


def _train_fm(steps: int) -> list[torch.Tensor]:
    config = load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category", "model.dense_features": "price",
        "model.hidden": "", "model.embedding_dim": "8", "trainer.batch_size": "256"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(["user_id", "item_id", "category"], ["price"])
    events = list(SyntheticStream(PRESETS["bursty_new_users"]()).events(256 * steps))
    return [trainer.train_batch(batcher.build(events[i:i + 256])).probs
            for i in range(0, len(events), 256)]


def test_training_with_kernels_follows_training_without() -> None:
    with reference_ops.reference_ops(), python_paths():
        reference = _train_fm(6)
    fast = _train_fm(6)
    for got, want in zip(fast, reference):
        assert torch.allclose(got, want, atol=1e-4)


def test_gather_rows_kernel_matches_index_select_both_ways() -> None:
    g = torch.Generator().manual_seed(5)
    table = torch.randn(40, 9, generator=g, requires_grad=True)
    index = torch.randint(0, 40, (500,), generator=g)
    upstream = torch.randn(500, 9, generator=g)
    fast = native.gather_rows(table, index)
    (fast_grad,) = torch.autograd.grad(fast, table, upstream)
    reference = reference_ops.gather_rows(table, index)
    (reference_grad,) = torch.autograd.grad(reference, table, upstream)
    assert torch.equal(fast, reference)
    assert torch.allclose(fast_grad, reference_grad, atol=1e-5)


def test_unique_pairs_kernel_dedups_exactly_in_first_seen_order() -> None:
    ids = torch.tensor([5, INT64.min, 5, 5, INT64.max, INT64.min, 0])
    tags = torch.tensor([0, 1, 1, 0, 1, 1, 0])
    pair_ids, pair_tags, inverse, counts = native.unique_pairs(ids, tags)
    assert list(zip(pair_ids.tolist(), pair_tags.tolist())) == [
        (5, 0), (INT64.min, 1), (5, 1), (INT64.max, 1), (0, 0)]
    assert inverse.tolist() == [0, 1, 2, 0, 3, 1, 4]
    assert counts.tolist() == [2, 2, 1, 1, 1]


@pytest.mark.parametrize("tagged", [False, True], ids=["plain", "tagged"])
def test_id_index_kernels_hash_as_the_torch_probes_do(tagged: bool) -> None:
    # Both write and read the same slot arrays: an index filled by one is read by the other.
    g = torch.Generator().manual_seed(6)
    # Enough ids that segments double and then split (past 2^15 slots).
    ids = torch.unique(torch.cat([torch.randint(-(2**62), 2**62, (50_000,), generator=g),
                                  torch.tensor([INT64.min, INT64.max, 0, -1])]))
    tags = torch.randint(0, 4, (ids.numel(),), generator=g) if tagged else None
    for writer, reader in ((reference_ops.reference_ops, contextlib.nullcontext),
                           (contextlib.nullcontext, reference_ops.reference_ops)):
        index = IdIndex(initial_slots=64, tagged=tagged)  # grows on the way
        with writer():
            rows = torch.cat([index.insert(ids[i:i + 5000], None if tags is None
                                           else tags[i:i + 5000])
                              for i in range(0, ids.numel(), 5000)])
            index.remove(ids[:7000], None if tags is None else tags[:7000])  # tombstones
            assert index.moved > ids.numel() // 2
        with reader():
            got = index.lookup(ids, tags)
            assert torch.equal(got[7000:], rows[7000:])
            assert bool((got[:7000] == -1).all())
            others = ids + 1 if not tagged else ids
            other_tags = None if tags is None else tags + 4  # same ids, other tables
            assert bool((index.lookup(others[~torch.isin(others, ids)] if not tagged else others,
                                      other_tags) == -1).all())


def test_id_normal_kernel_draws_the_torch_versions_values() -> None:
    ids = torch.tensor([0, 1, -1, INT64.min, INT64.max, 123456789012345])
    for dim, seed in ((8, 0), (17, 3), (1, 2**40)):
        fast = id_normal(ids, dim, seed)
        with reference_ops.reference_ops():
            reference = id_normal(ids, dim, seed)
        assert fast.shape == reference.shape == (6, dim)
        assert torch.allclose(fast, reference, rtol=1e-6, atol=1e-6)


def test_a_full_table_admits_the_same_ids_with_and_without_kernels() -> None:
    # max_rows: who gets the last rows must not depend on the dedup's order.
    from streamrec.model.tables.base import make_tables
    admitted = []
    for context in (contextlib.nullcontext, reference_ops.reference_ops):
        with context():
            tables = make_tables(["a", "b"], 3, lambda name: TableConfig(max_rows=2), seed=0)
            ec = DynamicEmbeddingCollection(tables)
            ids = {"a": [30, 10, 20, 30], "b": [7, 5, 6, 5]}
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=["a", "b"], values=torch.tensor(ids["a"] + ids["b"]),
                lengths=torch.ones(8, dtype=torch.int32))
            ec.forward(kjt, now_ms=1)
            admitted.append({name: sorted(t.export_all().upserted.ids.tolist())
                             for name, t in tables.items()})
    assert admitted[0] == admitted[1] == {"a": [10, 20], "b": [5, 6]}


def test_kernels_write_float32_whatever_the_default_dtype() -> None:
    events = list(SyntheticStream(PRESETS["drifting"]()).events(64))
    ids = torch.tensor([1, 2, 3])
    with reference_ops.reference_ops(), python_paths():
        batch, init = Batcher(["user_id", "category"], ["price"]).build(events), \
            id_normal(ids, 4, 0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fast, fast_init = Batcher(["user_id", "category"], ["price"]).build(events), \
            id_normal(ids, 4, 0)
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(fast.labels, batch.labels) and fast.labels.dtype == torch.float32
    assert torch.equal(fast.dense, batch.dense)
    assert torch.equal(fast_init, init)


def test_the_fm_kernels_take_an_empty_batch_in_any_layout() -> None:
    model = _fm_model([], [])
    pooled = torch.empty(0, 10).as_strided((0, 3, 9), (10, 1, 3))  # no unit column stride
    assert model(pooled, torch.empty(0, 0)).shape == (0,)


def test_a_value_that_empties_the_events_list_cannot_crash_the_batcher(tmp_path: Path) -> None:
    # The batcher's C pass calls the id memo, which may run Python code (a value's
    # __hash__): it walks a private copy of the list, not the caller's.
    script = tmp_path / "mutate.py"
    script.write_text(
        "from streamrec.ingest.batch import Batcher\n"
        "from streamrec.ingest.event import Event\n"
        "events = []\n"
        "class Sneaky(str):\n"
        "    def __hash__(self):\n"
        "        events.clear()\n"
        "        return str.__hash__(self)\n"
        "events += [Event(type='example', user_id=i, item_id=i, timestamp_ms=i,\n"
        "                 features={'tag': (Sneaky('v%d' % i),)}, label=1.0)\n"
        "           for i in range(200)]\n"
        "try:\n"
        "    print(len(Batcher(['tag'], []).build(events)))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

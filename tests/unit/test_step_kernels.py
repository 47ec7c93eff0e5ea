"""The hand-written pieces of the training step agree with the textbook versions."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.ingest.batch import Batcher
from streamrec import native
from streamrec.config import ModelConfig, TableConfig, load_config
from streamrec.synthetic import PRESETS, SyntheticStream
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.history import _exclusive_prefix
from streamrec.model.ctr import CTRModel, fm_interaction
from streamrec.model.tables.index import IdIndex
from streamrec.model.tables.rows import id_normal
from streamrec.model.tables.sort import stable_argsort, unique
from streamrec.trainer.trainer import OnlineTrainer

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


# The C kernels (streamrec/native) against the torch code they replace ---------


def _kernels_or_skip() -> None:
    if not native.available():
        pytest.skip("no C compiler here: the torch versions are what runs")


def test_kernels_are_built_and_used_where_a_compiler_exists() -> None:
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler on this machine")
    assert native.available(torch.empty(1))
    assert not native.available(torch.empty(1, dtype=torch.float64))  # float32 only


def _fm_model(dense: list[str], history: list[str]) -> CTRModel:
    model = CTRModel(ModelConfig(sparse_features=["user_id", "item_id", "category"],
                                 dense_features=dense, embedding_dim=8, hidden=[],
                                 history_features=history))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("layout", ["fields-first", "examples-first"])
@pytest.mark.parametrize("dense", [[], ["price"]])
@pytest.mark.parametrize("history", [[], ["user_id"]])
def test_fm_kernels_match_the_layerwise_model(layout: str, dense: list[str],
                                              history: list[str]) -> None:
    _kernels_or_skip()
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

    def run() -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        out = model(pooled, dense_x, counts)
        return out, torch.autograd.grad(out, inputs, upstream, allow_unused=True)

    fast, fast_grads = run()
    with native.disabled():
        reference, reference_grads = run()
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(fast_grads, reference_grads):
        assert (got is None) == (want is None)
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fm_kernels_on_an_empty_slice_give_zero_weight_gradients() -> None:
    # A rank's slice of a global batch may be empty; its (all-reduced)
    # gradients must then be zeros, not whatever memory the buffers held.
    _kernels_or_skip()
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
    _kernels_or_skip()
    g = torch.Generator().manual_seed(4)
    stored = torch.randint(0, 9, (50, 2), generator=g).float()
    inverse = torch.randint(0, 50, (3000,), generator=g)
    y = torch.randint(0, 2, (3000,), generator=g).float()
    before, totals = native.history_prefix(stored, inverse, y)
    assert torch.equal(before, stored[inverse] + _exclusive_prefix(
        inverse, torch.stack([torch.ones_like(y), y], dim=1)))
    assert torch.equal(totals, torch.zeros(50, 2).index_add_(
        0, inverse, torch.stack([torch.ones_like(y), y], dim=1)))


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
    _kernels_or_skip()
    with native.disabled():
        reference = _train_fm(6)
    fast = _train_fm(6)
    for got, want in zip(fast, reference):
        assert torch.allclose(got, want, atol=1e-4)


def test_a_failed_build_falls_back_to_torch_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setattr(native, "_loaded", {})  # as in a fresh process
    monkeypatch.setenv("STREAMREC_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    events = list(SyntheticStream(PRESETS["drifting"]()).events(50))
    with caplog.at_level(logging.WARNING, logger="streamrec.native"):
        assert not native.available()
        batch = Batcher(["user_id", "item_id", "category"], ["price"]).build(events)
    assert "native kernels (the slower torch versions run) unavailable" in caplog.text
    assert "native batch builder (the slower Python batcher runs) unavailable" in caplog.text
    assert "false failed" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    model = _fm_model([], [])
    assert model(torch.randn(4, 3, 9), torch.empty(4, 0)).shape == (4,)
    assert len(batch) == 50 and batch.sparse.values().numel() == 150


def test_kernels_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("STREAMREC_NATIVE", "0")
    assert not native.available()
    assert native.batch_columns([], (), (), {}, (1, 2, 6, 7, 8, 3)) is None


def test_gather_rows_kernel_matches_index_select_both_ways() -> None:
    _kernels_or_skip()
    g = torch.Generator().manual_seed(5)
    table = torch.randn(40, 9, generator=g, requires_grad=True)
    index = torch.randint(0, 40, (500,), generator=g)
    upstream = torch.randn(500, 9, generator=g)
    fast = native.gather_rows(table, index)
    (fast_grad,) = torch.autograd.grad(fast, table, upstream)
    reference = table.index_select(0, index)
    (reference_grad,) = torch.autograd.grad(reference, table, upstream)
    assert torch.equal(fast, reference)
    assert torch.allclose(fast_grad, reference_grad, atol=1e-5)


def test_unique_pairs_kernel_dedups_exactly_in_first_seen_order() -> None:
    _kernels_or_skip()
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
    _kernels_or_skip()
    g = torch.Generator().manual_seed(6)
    # Enough ids that segments double and then split (past 2^15 slots).
    ids = torch.unique(torch.cat([torch.randint(-(2**62), 2**62, (50_000,), generator=g),
                                  torch.tensor([INT64.min, INT64.max, 0, -1])]))
    tags = torch.randint(0, 4, (ids.numel(),), generator=g) if tagged else None
    for writer, reader in ((native.disabled, contextlib.nullcontext),
                           (contextlib.nullcontext, native.disabled)):
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
    _kernels_or_skip()
    ids = torch.tensor([0, 1, -1, INT64.min, INT64.max, 123456789012345])
    for dim, seed in ((8, 0), (17, 3), (1, 2**40)):
        fast = id_normal(ids, dim, seed)
        with native.disabled():
            reference = id_normal(ids, dim, seed)
        assert fast.shape == reference.shape == (6, dim)
        assert torch.allclose(fast, reference, rtol=1e-6, atol=1e-6)


def test_a_damaged_cached_library_is_built_again_and_any_user_can_load_it(
        tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    # Fresh processes: a process keeps the library it loaded mapped.
    env = {**os.environ, "STREAMREC_NATIVE_DIR": str(tmp_path),
           "CC": "cc -O2"}  # a compiler command with arguments
    built = subprocess.run([sys.executable, "-m", "streamrec.native"], env=env,
                           capture_output=True, text=True, check=True)
    paths = [Path(line) for line in built.stdout.split()]
    assert len(paths) == 3  # kernels, batcher, Kafka record reader
    for path in paths:  # images build as root and train as another user
        assert path.stat().st_mode & 0o005 == 0o005, oct(path.stat().st_mode)
    # A truncated library would kill the process in dlopen (SIGBUS): it is rebuilt.
    damaged = paths[0]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    check = subprocess.run(
        [sys.executable, "-c", "from streamrec import native; print(native.available())"],
        env=env, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "True", check.stderr
    assert "damaged; building it again" in check.stderr
    assert damaged.stat().st_size > 1000
    assert not list(tmp_path.glob("*.partial"))


def test_a_full_table_admits_the_same_ids_with_and_without_kernels() -> None:
    # max_rows: who gets the last rows must not depend on the dedup's order.
    from streamrec.model.tables.base import make_tables
    admitted = []
    for context in (contextlib.nullcontext, native.disabled):
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
    _kernels_or_skip()
    events = list(SyntheticStream(PRESETS["drifting"]()).events(64))
    ids = torch.tensor([1, 2, 3])
    with native.disabled():
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
    _kernels_or_skip()
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

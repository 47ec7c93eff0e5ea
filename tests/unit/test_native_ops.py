"""torch.ops.streamrec: each operator against its reference (tests/reference_ops.py),
torch.library.opcheck on each, gradcheck on the differentiable ones, checked inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec import native
from streamrec.model.tables.index import IdIndex
from tests import reference_ops

INT64 = torch.iinfo(torch.int64)
ROOT = Path(__file__).resolve().parents[2]
ids_strategy = st.lists(st.one_of(st.integers(-3, 3), st.integers(INT64.min, INT64.max)),
                        max_size=60)


def _fm_inputs(dtype: torch.dtype, extra: bool, batch: int = 5, fields: int = 3, dim: int = 4
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # Fields first, as the model passes them: a transposed view of [B, F, d+1].
    rows = torch.randn(batch, fields, dim + 1, generator=g, dtype=dtype).transpose(0, 1)
    e = torch.randn(batch, dim, generator=g, dtype=dtype) if extra else None
    weight = torch.randn(fields + extra, dim, generator=g, dtype=dtype)
    return rows, e, weight


def _index_with(ids: torch.Tensor, tags: torch.Tensor | None) -> IdIndex:
    index = IdIndex(initial_slots=64, tagged=tags is not None)
    index.insert(ids, tags)
    return index


def _index_args(index: IdIndex) -> list[object]:
    return [*index._layout(), index._global_bits, 1 << 15]


# Against the references ---------------------------------------------------------------


@pytest.mark.parametrize("extra", [False, True])
def test_fm_head_matches_its_reference_value_and_gradients(extra: bool) -> None:
    rows, e, weight = _fm_inputs(torch.float32, extra)
    inputs = [t.requires_grad_(True) for t in (rows, e, weight) if t is not None]
    upstream = torch.randn(rows.shape[1])
    got = native.fm_head(rows, e, weight)
    want = reference_ops.fm_head(rows, e, weight)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(got, inputs, upstream),
                    torch.autograd.grad(want, inputs, upstream)):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=50), st.integers(1, 4))
def test_gather_rows_matches_index_select(index: list[int], width: int) -> None:
    table = torch.randn(10, width)
    i = torch.tensor(index, dtype=torch.int64)
    assert torch.equal(native.gather_rows(table, i), reference_ops.gather_rows(table, i))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0.0, 1.0])), max_size=80))
def test_history_prefix_matches_its_reference(elements: list[tuple[int, float]]) -> None:
    stored = torch.arange(16, dtype=torch.float32).view(8, 2)
    inverse = torch.tensor([k for k, _ in elements], dtype=torch.int64)
    y = torch.tensor([v for _, v in elements], dtype=torch.float32)
    for got, want in zip(native.history_prefix(stored, inverse, y),
                         reference_ops.history_prefix(stored, inverse, y)):
        assert torch.equal(got, want)


@settings(max_examples=60, deadline=None)
@given(ids_strategy, st.data())
def test_unique_pairs_matches_its_reference(ids: list[int], data: st.DataObject) -> None:
    tags = data.draw(st.lists(st.integers(0, 2), min_size=len(ids), max_size=len(ids)))
    i, t = torch.tensor(ids, dtype=torch.int64), torch.tensor(tags, dtype=torch.int64)
    for got, want in zip(native.unique_pairs(i, t), reference_ops.unique_pairs(i, t)):
        assert torch.equal(got, want)


@settings(max_examples=60, deadline=None)
@given(ids_strategy, st.booleans())
def test_index_hash_matches_its_reference(ids: list[int], tagged: bool) -> None:
    i = torch.tensor(ids, dtype=torch.int64)
    tags = torch.arange(len(ids), dtype=torch.int64) % 5 if tagged else None
    assert torch.equal(native.index_hash(i, tags), reference_ops.index_hash(i, tags))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(INT64.min, INT64.max), max_size=40, unique=True), st.booleans())
def test_index_find_and_place_match_their_references(ids: list[int], tagged: bool) -> None:
    i = torch.tensor(ids, dtype=torch.int64)
    tags = torch.arange(len(ids), dtype=torch.int64) % 3 if tagged else None
    index = _index_with(i[: len(ids) // 2], None if tags is None else tags[: len(ids) // 2])
    row_ids, row_tags = index._ids.data, index._tags.data if tagged else None
    args = _index_args(index)
    assert torch.equal(native.index_find(*args, row_ids, row_tags, i, tags),
                       reference_ops.index_find(*args, row_ids, row_tags, i, tags))
    # Placing the absent half (their rows made up) writes the same values and counts (where
    # two collide the slots they take may differ: either way each chain finds its key).
    rest = i[len(ids) // 2:]
    h = native.index_hash(rest, None if tags is None else tags[len(ids) // 2:])
    values = (h << 32) | (torch.arange(rest.numel()) + 1000)
    placed = []
    for place in (native.index_place, reference_ops.index_place):
        slots, used, live = args[0].clone(), index._used.clone(), index._live.clone()
        place(slots, *args[1:], used, live, values)
        placed.append((torch.sort(slots).values, used, live))
    for got, want in zip(*placed):
        assert torch.equal(got, want)


@settings(max_examples=30, deadline=None)
@given(ids_strategy, st.integers(1, 9), st.integers(INT64.min, INT64.max))
def test_id_normal_matches_its_reference(ids: list[int], dim: int, offset: int) -> None:
    i = torch.tensor(ids, dtype=torch.int64)
    got, want = native.id_normal(i, dim, offset), reference_ops.id_normal(i, dim, offset)
    assert got.dtype == want.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 5), max_size=3),
                          st.sampled_from([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0),
                                           (2.5, 2.5)])), max_size=30),
       st.lists(st.booleans(), min_size=6, max_size=6))
def test_wide_learn_matches_its_reference(examples: list[tuple[list[int], tuple[float, float]]],
                                          learnable: list[bool]) -> None:
    g = torch.Generator().manual_seed(len(examples))
    state = torch.stack([torch.randn(6, generator=g), torch.rand(6, generator=g)], dim=1)
    lengths = torch.tensor([len(rows) for rows, _ in examples], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    slots = torch.tensor([u for rows, _ in examples for u in rows], dtype=torch.int64)
    base = torch.randn(len(examples), generator=g)
    outcomes = torch.tensor([o for _, o in examples], dtype=torch.float32).view(-1, 2)
    args = (state, offsets, slots, torch.tensor(learnable), base, outcomes, 0.3, 1.0)
    for got, want in zip(native.wide_learn(*args), reference_ops.wide_learn(*args)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(native.wide_learn(*args)[1][~torch.tensor(learnable)],
                       state[~torch.tensor(learnable)])  # rows not admitted never move


# opcheck and gradcheck -----------------------------------------------------------------


def _opcheck_cases() -> list[tuple[str, tuple]]:
    rows, e, weight = _fm_inputs(torch.float32, True)
    rows = rows.requires_grad_(True)
    ids = torch.tensor([5, INT64.min, 5, 9, INT64.max])
    tags = torch.tensor([0, 1, 0, 2, 1])
    index = _index_with(ids[:3], tags[:3])
    row_ids, row_tags = index._ids.data, index._tags.data
    h = native.index_hash(ids[3:], tags[3:])
    values = (h << 32) | torch.tensor([40, 41])
    return [
        ("fm_head", (rows, e, weight.requires_grad_(True))),
        ("fm_head", (rows, None, torch.randn(3, 4))),
        ("gather_rows", (torch.randn(6, 3, requires_grad=True), torch.tensor([5, 0, 5]))),
        ("history_prefix", (torch.rand(3, 2), torch.tensor([2, 0, 2, 1]),
                            torch.tensor([1.0, 0.0, 1.0, 1.0]))),
        ("unique_pairs", (ids, tags)),
        ("index_hash", (ids, tags)),
        ("index_hash", (ids, None)),
        ("index_find", (*_index_args(index), row_ids, row_tags, ids, tags)),
        ("index_place", (index._slots.data.clone(), *_index_args(index)[1:],
                         index._used.clone(), index._live.clone(), values)),
        ("id_normal", (ids, 4, -7)),
        ("wide_learn", (torch.rand(3, 2), torch.tensor([0, 2, 2, 3]), torch.tensor([0, 2, 2]),
                        torch.tensor([True, False, True]), torch.randn(3),
                        torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), 0.1, 1.0)),
    ]


@pytest.mark.parametrize("name, args", _opcheck_cases(),
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(_opcheck_cases())])
def test_opcheck(name: str, args: tuple) -> None:
    torch.library.opcheck(getattr(torch.ops.streamrec, name).default, args)


@pytest.mark.parametrize("extra", [False, True])
def test_fm_head_gradcheck_in_float64(extra: bool) -> None:
    rows, e, weight = _fm_inputs(torch.float64, extra)
    inputs = [t.requires_grad_(True) for t in (rows, e, weight) if t is not None]
    if extra:
        assert torch.autograd.gradcheck(native.fm_head, tuple(inputs))
    else:
        assert torch.autograd.gradcheck(lambda r, w: native.fm_head(r, None, w), tuple(inputs))


def test_gather_rows_gradcheck_in_float64() -> None:
    table = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(native.gather_rows, (table, torch.tensor([5, 0, 5, 2])))


# Checked inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: native.gather_rows(torch.randn(4, 2), torch.tensor([4])), "out of range"),
    (lambda: native.gather_rows(torch.randn(4, 2), torch.tensor([0], dtype=torch.int32)),
     "must be Long"),
    (lambda: native.gather_rows(torch.randn(4), torch.tensor([0])), "must be 2-D"),
    (lambda: native.fm_head(torch.randn(2, 3, 5), None, torch.randn(3, 4)), "weight must be"),
    (lambda: native.fm_head(torch.randn(2, 3, 5), None, torch.randn(2, 4, dtype=torch.float64)),
     "must be Float"),
    (lambda: native.fm_head(torch.randn(2, 3, 5), torch.randn(2, 4), torch.randn(3, 4)),
     "extra must be"),
    (lambda: native.history_prefix(torch.zeros(2, 2), torch.tensor([2]), torch.ones(1)),
     "out of range"),
    (lambda: native.unique_pairs(torch.tensor([1, 2]), torch.tensor([0])), "same length"),
    (lambda: native.id_normal(torch.tensor([1]), -1, 0), "dim must be"),
    (lambda: native.wide_learn(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([2]),
                               torch.ones(2, dtype=torch.bool), torch.zeros(1),
                               torch.ones(1, 2), 0.1, 1.0), "out of range"),
    (lambda: native.wide_learn(torch.zeros(2, 2), torch.tensor([0, 2]), torch.tensor([1]),
                               torch.ones(2, dtype=torch.bool), torch.zeros(1),
                               torch.ones(1, 2), 0.1, 1.0), "offsets must run"),
])
def test_bad_inputs_get_a_clear_error(call: object, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()  # type: ignore[operator]


def test_a_full_segment_is_an_error_not_an_endless_probe() -> None:
    slots = torch.full((64,), (7 << 32) | 1, dtype=torch.int64)  # every slot taken
    layout = (slots, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
              torch.full((1,), 6, dtype=torch.int64), 0, 64)
    with pytest.raises(RuntimeError, match="is full"):
        native.index_place(*layout, torch.zeros(1, dtype=torch.int64),
                           torch.zeros(1, dtype=torch.int64), torch.tensor([(9 << 32) | 2]))
    with pytest.raises(RuntimeError, match="no empty slot"):
        native.index_find(*layout, torch.zeros(4, dtype=torch.int64), None,
                          torch.tensor([12345]), None)


def test_the_compiled_readers_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="labels must hold 2 items"):
        from streamrec.native import _batch
        _batch.batch_columns([(0,) * 9] * 2, (0,), (), {}, (1, 2, 6, 7, 8, 3),
                             bytearray(16), bytearray(0), bytearray(4), bytearray(8),
                             bytearray(16))
    with pytest.raises(TypeError):
        native.kafka_records("not bytes", 0, 0, 0, 0, 0, 0, tuple, "t", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        native.kafka_records(b"ab", 3, 0, 0, 0, 0, 0, tuple, "t", 0, 0)


def test_unbuilt_extensions_say_how_to_build_them() -> None:
    code = ("import sys; sys.modules['streamrec.native._batch'] = None\n"
            "import streamrec.native")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "compiled extensions are missing" in done.stderr
    assert "python setup.py build_ext --inplace" in done.stderr


def test_a_missing_compiler_is_an_install_time_error(tmp_path: Path) -> None:
    env = {**os.environ, "CC": "no-such-cc", "CXX": "no-such-c++"}
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib",
                           str(tmp_path / "lib"), "--build-temp", str(tmp_path / "temp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "needs a C compiler (CC='no-such-cc' not found)" in done.stderr
    assert "a C++ compiler (CXX='no-such-c++' not found)" in done.stderr
    assert not (tmp_path / "lib").exists()

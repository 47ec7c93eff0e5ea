"""IdIndex: collisionless id -> row mapping, checked against a dict model."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.model.tables.index import IdIndex

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


def test_ids_that_collide_under_modulo_and_low_bits_get_distinct_rows() -> None:
    # Every id below is 0 modulo 2^20 and agrees in its low 20 bits, which is
    # exactly what a modulo-hashed static table would map to one row.
    ids = torch.tensor([k << 20 for k in range(-500, 500)], dtype=torch.int64)
    ids = torch.cat([ids, torch.tensor([-(1 << 63), (1 << 63) - 1, -1, 0])])
    ids = torch.unique(ids)
    index = IdIndex(initial_slots=16)
    rows, new = index.lookup_or_insert(ids)
    assert bool(new.all())
    assert torch.unique(rows).numel() == ids.numel() == 1003
    assert torch.equal(index.lookup(ids), rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(INT64, max_size=40)), max_size=30))
def test_matches_a_dict_under_inserts_and_removes(ops: list[tuple[bool, list[int]]]) -> None:
    index = IdIndex(initial_slots=16)
    model: dict[int, int] = {}
    for remove, batch in ops:
        ids = torch.unique(torch.tensor(batch, dtype=torch.int64))
        if remove:
            freed = index.remove(ids)
            expected = sorted(model.pop(i) for i in ids.tolist() if i in model)
            assert sorted(freed.tolist()) == expected
        else:
            rows, new = index.lookup_or_insert(ids)
            for i, r, n in zip(ids.tolist(), rows.tolist(), new.tolist()):
                assert n == (i not in model)
                if i in model:
                    assert model[i] == r
                model[i] = r
        assert len(index) == len(model)
        # Live ids never share a row.
        assert len(set(model.values())) == len(model)
    if model:
        keys = torch.tensor(list(model), dtype=torch.int64)
        assert index.lookup(keys).tolist() == list(model.values())


def test_removed_rows_are_reused_before_new_rows() -> None:
    index = IdIndex()
    rows, _ = index.lookup_or_insert(torch.arange(100))
    index.remove(torch.arange(10))
    new_rows, _ = index.lookup_or_insert(torch.arange(1000, 1010))
    assert sorted(new_rows.tolist()) == list(range(10))
    assert index.row_capacity == 100


def test_state_dict_round_trip() -> None:
    index = IdIndex()
    index.lookup_or_insert(torch.arange(-50, 50) * 7919)
    index.remove(torch.tensor([0, 7919]))
    restored = IdIndex.from_state_dict(index.state_dict())
    probe = torch.arange(-60, 60) * 7919
    assert torch.equal(restored.lookup(probe), index.lookup(probe))
    a, _ = restored.lookup_or_insert(torch.tensor([12345]))
    b, _ = index.lookup_or_insert(torch.tensor([12345]))
    assert torch.equal(a, b)


def test_a_tagged_index_round_trips_with_its_tags() -> None:
    # The same id under two tags is two keys; a restored index keeps them apart.
    index = IdIndex(tagged=True)
    ids = torch.tensor([5, 5, -(1 << 63), -(1 << 63)])
    tags = torch.tensor([0, 1, 0, 1])
    rows = index.insert(ids, tags)
    restored = IdIndex.from_state_dict(index.state_dict())
    assert restored.tagged
    assert torch.equal(restored.lookup(ids, tags), rows)
    assert restored.lookup(torch.tensor([5]), torch.tensor([2])).item() == -1


def test_a_tagged_lookup_or_insert_gives_one_row_per_id_and_tag() -> None:
    index = IdIndex(initial_slots=64, tagged=True)
    ids, tags = torch.tensor([5, 5, 9]), torch.tensor([0, 1, 1])
    rows, new = index.lookup_or_insert(ids, tags=tags)
    assert new.tolist() == [True, True, True] and len(set(rows.tolist())) == 3
    again, new = index.lookup_or_insert(torch.tensor([5, 9, 5]), tags=torch.tensor([1, 1, 2]))
    assert new.tolist() == [False, False, True]
    assert again[:2].tolist() == [rows[1].item(), rows[2].item()]

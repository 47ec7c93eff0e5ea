"""Conformance suite: every embedding table implementation must pass these."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from streamrec.config import TableConfig
from streamrec.model.tables.base import EmbeddingTable
from streamrec.model.tables.filter import FrequencyFilter
from streamrec.model.tables.group import TableGroup
from streamrec.model.tables.sharded import ShardedEmbeddingTable
from streamrec.model.tables.table import DynamicEmbeddingTable

DIM = 5
Factory = Callable[..., EmbeddingTable]


def _dynamic(**kw: object) -> EmbeddingTable:
    return DynamicEmbeddingTable("t", DIM, TableConfig(initial_capacity=16, **kw))  # type: ignore[arg-type]


def _sharded(**kw: object) -> EmbeddingTable:
    return ShardedEmbeddingTable("t", DIM, TableConfig(initial_capacity=16, shards=4, **kw))  # type: ignore[arg-type]


def _grouped(**kw: object) -> EmbeddingTable:
    """The middle table of a three-table group whose neighbours hold the same ids."""
    group = TableGroup(["a", "t", "c"], DIM, TableConfig(initial_capacity=16, **kw))  # type: ignore[arg-type]
    neighbours = torch.cat([torch.arange(-300, 300) << 24, torch.arange(300)])
    for name in ("a", "c"):
        for _ in range(max(1, group.config.min_count)):
            group.views[name].lookup(torch.unique(neighbours), now_ms=10**12)
    return group.views["t"]


@pytest.fixture(params=[_dynamic, _sharded, _grouped], ids=["dynamic", "sharded4", "grouped"])
def make(request: pytest.FixtureRequest) -> Factory:
    return request.param


def ids_of(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_distinct_ids_get_distinct_rows_including_extreme_ids(make: Factory) -> None:
    table = make()
    ids = torch.unique(torch.cat([torch.arange(-300, 300) << 24,
                                  ids_of(-(1 << 63), (1 << 63) - 1)]))
    rows = table.lookup(ids, now_ms=1)
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == ids.numel()
    assert len(table) == ids.numel()
    # The same ids map to the same rows on the next lookup.
    assert torch.equal(table.lookup(ids, now_ms=2), rows)


def test_new_rows_start_small_with_zero_first_order_weight(make: Factory) -> None:
    table = make()
    values = table.read(table.lookup(torch.arange(200), now_ms=1))
    assert values.shape == (200, DIM)
    assert bool((values[:, -1] == 0).all())
    assert 0 < float(values[:, :-1].std()) < 0.05


def test_lookup_without_train_never_admits(make: Factory) -> None:
    table = make()
    rows = table.lookup(ids_of(1, 2, 3), train=False)
    assert rows.tolist() == [-1, -1, -1]
    assert len(table) == 0


def test_frequency_filter_admits_after_min_count_sightings(make: Factory) -> None:
    table = make(min_count=3)
    assert table.lookup(ids_of(7), now_ms=1).tolist() == [-1]
    assert table.lookup(ids_of(7), now_ms=2).tolist() == [-1]
    assert table.lookup(ids_of(7), now_ms=3).item() >= 0
    # Occurrences within one batch count too.
    assert table.lookup(ids_of(8), counts=ids_of(3), now_ms=4).item() >= 0
    assert table.stats.filtered == 2
    assert table.stats.admitted == 2


def test_frequency_filter_memory_is_bounded(make: Factory) -> None:
    table = make(min_count=5, filter_width=1 << 16)
    before = table.memory_bytes()
    for start in range(0, 200_000, 2_000):
        table.lookup(torch.arange(start, start + 2_000), now_ms=1)
    # 200k distinct ids, each seen once: the sketch's memory did not grow, and
    # hash collisions admitted (almost) none of them early.
    assert table.memory_bytes() == before
    assert len(table) < 200


def test_filtered_ids_read_zero_and_take_no_update(make: Factory) -> None:
    table = make(min_count=2)
    admitted = table.lookup(ids_of(1), counts=ids_of(2), now_ms=1)
    rows = torch.cat([admitted, table.lookup(ids_of(2), now_ms=1)])
    assert rows[1].item() == -1
    assert bool((table.read(rows)[1] == 0).all())
    before = table.read(admitted).clone()
    table.update(rows, torch.ones(2, DIM))
    assert not torch.equal(table.read(admitted), before)
    delta = table.collect_delta()
    ids, values = delta.upserted.ids, delta.upserted.values
    assert ids.tolist() == [1]


def test_update_is_rowwise_adagrad(make: Factory) -> None:
    table = make(lr=0.1)
    row = table.lookup(ids_of(5), now_ms=1)
    w0 = table.read(row).clone()
    g = torch.tensor([[1.0, 2.0, 0.0, -1.0, 3.0]])
    table.update(row, g)
    m = float(g.pow(2).mean())
    assert torch.allclose(table.read(row), w0 - 0.1 * g / (m ** 0.5 + 1e-8))
    table.update(row, g)
    assert torch.allclose(table.read(row), w0 - 0.1 * g / m ** 0.5 - 0.1 * g / (2 * m) ** 0.5,
                          atol=1e-6)


def test_touched_rows_and_tombstones_form_the_delta(make: Factory) -> None:
    table = make(ttl_s=10)
    rows = table.lookup(ids_of(1, 2, 3), now_ms=0)
    table.update(rows[:2], torch.ones(2, DIM))
    # Updated rows, and admitted ones: id 3's initial values are what the
    # trainer scores it with, so serving needs them too.
    delta = table.collect_delta()
    ids, values, evicted = delta.upserted.ids, delta.upserted.values, delta.evicted.ids
    assert sorted(ids.tolist()) == [1, 2, 3]
    order = torch.argsort(ids)
    assert torch.equal(values[order], table.read(rows))
    assert evicted.numel() == 0
    # Nothing changed since: an empty delta.
    delta = table.collect_delta()
    ids, values, evicted = delta.upserted.ids, delta.upserted.values, delta.evicted.ids
    assert ids.numel() == 0 and values.shape == (0, DIM) and evicted.numel() == 0
    # Id 3 is refreshed at t=15 s; 1 and 2 go unseen past the 10 s TTL.
    table.lookup(ids_of(3), now_ms=15_000)
    assert table.expire(now_ms=15_000) == 2
    delta = table.collect_delta()
    ids, evicted = delta.upserted.ids, delta.evicted.ids
    assert sorted(evicted.tolist()) == [1, 2]
    assert table.lookup(ids_of(1, 2), train=False).tolist() == [-1, -1]
    assert len(table) == 1
    assert table.stats.evicted == 2


def test_expiry_uses_event_time_not_wall_time(make: Factory) -> None:
    table = make(ttl_s=1)
    table.lookup(ids_of(1), now_ms=1_000_000)
    assert table.expire(now_ms=1_000_500) == 0
    assert len(table) == 1


def test_a_table_that_grows_every_step_still_expires_its_old_rows(make: Factory) -> None:
    # One new id per step of event time, and a sweep after each step, as the
    # trainer does: the first ids go stale while the table keeps growing.
    table = make(ttl_s=10)
    for step in range(60):
        table.lookup(ids_of(1000 + step), now_ms=step * 1000)
        table.expire(now_ms=step * 1000)
    live = set(table.export_all().upserted.ids.tolist())
    assert live == {1000 + s for s in range(49, 60)}
    assert table.stats.evicted == 49


def test_evicted_id_does_not_inherit_state(make: Factory) -> None:
    table = make(ttl_s=1, lr=0.1)
    row = table.lookup(ids_of(9), now_ms=0)
    for _ in range(20):
        table.update(row, torch.full((1, DIM), 5.0))
    table.lookup(ids_of(10), now_ms=5_000)
    table.expire(now_ms=5_000)
    # Id 11 takes the freed row; id 9 comes back as a new row.
    fresh = table.lookup(ids_of(9), now_ms=5_000)
    values = table.read(fresh)
    assert float(values[:, -1].abs().max()) == 0.0
    assert float(values.abs().max()) < 0.1
    # A fresh accumulator: the first step moves each coordinate by exactly lr.
    before = values.clone()
    table.update(fresh, torch.ones(1, DIM))
    assert torch.allclose(before - table.read(fresh), torch.full((1, DIM), 0.1), atol=1e-6)


def test_max_rows_bounds_the_table(make: Factory) -> None:
    table = make(max_rows=8)
    rows = table.lookup(torch.arange(20), now_ms=1)
    assert len(table) <= 8
    assert int((rows >= 0).sum()) == len(table)
    assert table.stats.rejected_full == 20 - len(table)
    assert table.stats.filtered == 0  # the frequency filter (off here) held none back


def test_save_and_restore_continue_identically(make: Factory) -> None:
    torch.manual_seed(0)
    a = make(min_count=2, ttl_s=100)
    for step in range(5):
        ids = torch.unique(torch.randint(0, 50, (30,)))
        rows = a.lookup(ids, now_ms=step * 1000)
        a.update(rows, torch.randn(ids.numel(), DIM))
    b = make(min_count=2, ttl_s=100)
    b.load_state_dict(a.state_dict())
    probe = torch.arange(0, 60)
    assert torch.equal(a.lookup(probe, train=False), b.lookup(probe, train=False))
    ids = torch.arange(0, 60)
    grads = torch.randn(60, DIM)
    ra, rb = a.lookup(ids, now_ms=9000), b.lookup(ids, now_ms=9000)
    a.update(ra, grads)
    b.update(rb, grads)
    assert torch.equal(a.read(ra), b.read(rb))
    ea, eb = a.export_all().upserted, b.export_all().upserted
    assert torch.equal(torch.sort(ea.ids).values, torch.sort(eb.ids).values)


def test_export_all_holds_every_live_row(make: Factory) -> None:
    table = make()
    rows = table.lookup(torch.arange(100, 150), now_ms=1)
    exported = table.export_all()
    ids, values = exported.upserted.ids, exported.upserted.values
    order = torch.argsort(ids)
    assert ids[order].tolist() == list(range(100, 150))
    assert torch.equal(values[order], table.read(rows))


def test_initial_rows_depend_on_the_id_only_not_layout_or_order() -> None:
    ids = torch.tensor([5, -9, 1 << 40, 77], dtype=torch.int64)
    single = _dynamic()
    sharded = _sharded()
    a = single.read(single.lookup(ids, now_ms=1))
    b = sharded.read(sharded.lookup(ids.flip(0), now_ms=1)).flip(0)
    assert torch.equal(a, b)
    other_seed = DynamicEmbeddingTable("t", DIM, TableConfig(initial_capacity=16), seed=1)
    assert not torch.equal(a, other_seed.read(other_seed.lookup(ids, now_ms=1)))


def test_prune_sweep_frees_rows_under_the_threshold(make: Factory) -> None:
    table = make(lr=0.1, prune_grace_s=10)
    rows = table.lookup(torch.arange(10), now_ms=1)
    # Rows 0-4 grow large; 5-9 keep their small initial values.
    for _ in range(5):
        table.update(rows[:5], torch.full((5, DIM), -1.0))
    table.collect_delta()
    assert table.expire(now_ms=10_000, prune_below=0.5) == 0  # admitted 9.999 s ago: grace
    assert table.expire(now_ms=10_001, prune_below=0.5) == 5
    assert table.lookup(torch.arange(10), train=False)[5:].tolist() == [-1] * 5
    assert len(table) == 5
    assert table.stats.pruned == 5 and table.stats.evicted == 0
    delta = table.collect_delta()
    tombstones = delta.evicted.ids
    assert sorted(tombstones.tolist()) == [5, 6, 7, 8, 9]


def test_filter_sketch_adds_every_sighting_even_when_ids_share_a_slot() -> None:
    # A 64-slot sketch with 500 distinct ids: most slots are shared within one
    # call, and every sighting must land in each row's counter for its slot
    # (before the periodic halving that ages the counts).
    sketch = FrequencyFilter(min_count=3, width=64, depth=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        ids = torch.unique(torch.randint(-2**40, 2**40, (500,), generator=gen))
        counts = torch.randint(1, 4, ids.shape, generator=gen)
        expected = sketch.counts.reshape(-1).to(torch.int64)
        expected.index_add_(0, sketch._slots(ids, None).reshape(-1), counts.repeat(2))
        admit = sketch.observe(ids, counts)
        # Count-min never under-counts: whatever was seen min_count times is in.
        assert bool(admit[counts >= 3].all())
        assert torch.equal(sketch.counts.reshape(-1).to(torch.int64), expected // 2)  # halved


def test_filter_sketches_of_a_group_count_apart() -> None:
    sketch = FrequencyFilter(min_count=2, width=1 << 10, depth=2, tags=3)
    ids = torch.arange(100)
    tags = torch.full_like(ids, 1)
    assert not bool(sketch.observe(ids, torch.ones_like(ids), tags).any())
    # Sightings under table 1 do not count for table 0 or 2 ...
    assert not bool(sketch.observe(ids, torch.ones_like(ids), tags * 0).any())
    assert not bool(sketch.observe(ids, torch.ones_like(ids), tags * 2).any())
    # ... and a second sighting under table 1 admits every id.
    assert bool(sketch.observe(ids, torch.ones_like(ids), tags).all())


def test_the_tables_store_reads_and_updates_its_rows(make: Factory) -> None:
    # The embedding collection, history features and serving go through stores.
    table = make()
    store = table.store
    assert store.names[table.tag] == table.name and store.dim == table.dim
    ids = torch.arange(40, 60)
    tags = torch.full_like(ids, table.tag)
    rows = store.lookup(tags, ids, now_ms=1)
    assert torch.equal(table.lookup(ids, train=False), rows)
    store.update(rows, torch.ones(ids.numel(), DIM))
    assert torch.equal(store.read(rows), table.read(rows))
    assert sorted(table.collect_delta().upserted.ids.tolist()) == ids.tolist()
    limits = torch.full((len(store.names),), float("nan"))
    assert store.expire(now_ms=1, max_rows=1 << 16, prune_below=limits) == 0


def test_clear_frees_every_row_as_an_uncounted_eviction(make: Factory) -> None:
    table = make()
    table.lookup(torch.arange(30), now_ms=1)
    table.collect_delta()
    table.clear()
    assert len(table) == 0 and table.stats.evicted == 0
    assert table.lookup(torch.arange(30), train=False).tolist() == [-1] * 30
    assert sorted(table.collect_delta().evicted.ids.tolist()) == list(range(30))


def test_evicted_ids_are_dropped_when_nothing_consumes_them(make: Factory) -> None:
    table = make(ttl_s=1)
    table.lookup(torch.arange(10), now_ms=0)
    table.keep_evicted_ids(False)
    assert table.expire(now_ms=5_000) == 10
    assert len(table.collect_delta().evicted) == 0
    table.keep_evicted_ids(True)
    table.lookup(torch.arange(10, 20), now_ms=10_000)
    assert table.expire(now_ms=20_000) == 10
    assert sorted(table.collect_delta().evicted.ids.tolist()) == list(range(10, 20))

"""Tables fused into one TableGroup train exactly as separate per-feature tables."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.config import TableConfig
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.tables.base import make_table, make_tables
from streamrec.model.tables.filter import FrequencyFilter
from streamrec.model.tables.group import GroupTableView

FEATURES = ["user", "item", "tag"]
DIM = 4
BATCH = 64


def _batch(step: int, gen: torch.Generator) -> KeyedJaggedTensor:
    # user/item: one id each, drawn from a drifting range; tag: 0..3 ids per
    # example. The same raw ids appear under every feature.
    lengths = torch.cat([torch.ones(2 * BATCH, dtype=torch.int64),
                         torch.randint(0, 4, (BATCH,), generator=gen)])
    values = torch.randint(0, 300, (int(lengths.sum()),), generator=gen) + 20 * step
    values[::7] = -(values[::7] << 40)  # negative and huge ids too
    return KeyedJaggedTensor(keys=FEATURES, values=values, lengths=lengths.to(torch.int32),
                             stride=BATCH)


def _train(collection: DynamicEmbeddingCollection, steps: int) -> None:
    gen = torch.Generator().manual_seed(7)
    target = torch.randn(len(FEATURES), DIM, generator=gen)
    for step in range(steps):
        pooled = collection.forward(_batch(step, gen), now_ms=1000 * step)
        loss = ((pooled - target) ** 2).sum() + collection.regularizer()
        loss.backward()
        collection.step()
        with torch.no_grad():  # an OptEmbed threshold the sweep prunes by
            collection.thresholds.fill_(0.02 * step)
        collection.expire(1000 * step)


def test_grouped_tables_train_like_separate_tables() -> None:
    config = TableConfig(min_count=2, ttl_s=8.0, initial_capacity=16, lr=0.1, prune_grace_s=1.0)
    prune = {"item": 1e-4}
    separate = DynamicEmbeddingCollection(
        {f: make_table(f, DIM, config, seed=3) for f in FEATURES}, prune)
    grouped_tables = make_tables(FEATURES, DIM, lambda _: config, seed=3)
    assert all(isinstance(t, GroupTableView) for t in grouped_tables.values())
    grouped = DynamicEmbeddingCollection(grouped_tables, prune)

    _train(separate, 30)
    _train(grouped, 30)

    for f in FEATURES:
        a, b = separate.tables[f], grouped.tables[f]
        exported = a.export_all()
        ids_a, rows_a = exported.upserted.ids, exported.upserted.values
        exported = b.export_all()
        ids_b, rows_b = exported.upserted.ids, exported.upserted.values
        order_a, order_b = torch.argsort(ids_a), torch.argsort(ids_b)
        assert torch.equal(ids_a[order_a], ids_b[order_b]), f
        torch.testing.assert_close(rows_a[order_a], rows_b[order_b], rtol=1e-5, atol=1e-6)
        sa, sb = a.stats, b.stats
        for k in ("admitted", "filtered", "evicted", "pruned"):
            assert getattr(sa, k) == getattr(sb, k), (f, k)
        delta_a, delta_b = a.collect_delta(), b.collect_delta()
        assert sorted(delta_a.upserted.ids.tolist()) == sorted(delta_b.upserted.ids.tolist())
        assert sorted(delta_a.evicted.ids.tolist()) == sorted(delta_b.evicted.ids.tolist())
    # The run exercised what it claims to compare.
    stats = grouped.tables["item"].stats
    assert stats.admitted and stats.filtered and stats.evicted and stats.pruned


def test_the_same_id_in_two_grouped_tables_gets_two_rows() -> None:
    tables = make_tables(["a", "b"], DIM, lambda _: TableConfig(initial_capacity=16))
    ids = torch.tensor([5, -(1 << 63), (1 << 63) - 1])
    rows_a = tables["a"].lookup(ids, now_ms=1)
    rows_b = tables["b"].lookup(ids, now_ms=1)
    assert not set(rows_a.tolist()) & set(rows_b.tolist())
    tables["a"].update(rows_a, torch.ones(3, DIM))
    assert torch.equal(tables["b"].read(rows_b), tables["b"].read(tables["b"].lookup(ids)))
    assert len(tables["a"]) == len(tables["b"]) == 3


def test_make_tables_groups_by_config_and_keeps_sharded_tables_apart() -> None:
    configs = {"a": TableConfig(), "b": TableConfig(), "c": TableConfig(min_count=3),
               "d": TableConfig(shards=2)}
    tables = make_tables(list(configs), DIM, configs.__getitem__)
    assert list(tables) == ["a", "b", "c", "d"]
    a, b, c = (tables[n] for n in "abc")
    assert isinstance(a, GroupTableView) and isinstance(b, GroupTableView)
    assert isinstance(c, GroupTableView)
    assert a.group is b.group and c.group is not a.group
    assert not isinstance(tables["d"], GroupTableView)


def test_a_grouped_table_restores_from_a_per_feature_checkpoint() -> None:
    config = TableConfig(min_count=2, initial_capacity=16)
    plain = make_table("a", DIM, config)
    ids = torch.arange(-50, 50) * 7919
    for step in range(3):
        rows = plain.lookup(ids, now_ms=step)
        plain.update(rows, torch.full((ids.numel(), DIM), 0.5))
    grouped = make_tables(["a", "b"], DIM, lambda _: config)["a"]
    grouped.load_state_dict(plain.state_dict())
    exported = plain.export_all()
    ids_a, rows_a = exported.upserted.ids, exported.upserted.values
    exported = grouped.export_all()
    ids_b, rows_b = exported.upserted.ids, exported.upserted.values
    order_a, order_b = torch.argsort(ids_a), torch.argsort(ids_b)
    assert torch.equal(ids_a[order_a], ids_b[order_b])
    assert torch.equal(rows_a[order_a], rows_b[order_b])
    # Filter state came along: an id seen once before the checkpoint is admitted now.
    plain.lookup(torch.tensor([424242]), now_ms=9)
    grouped.load_state_dict(plain.state_dict())
    assert grouped.lookup(torch.tensor([424242]), now_ms=10).item() >= 0


@pytest.mark.parametrize("kernels", ["native", "reference"])
def test_unique_pairs_is_exact_for_small_and_full_64_bit_ids(kernels: str) -> None:
    from streamrec import native
    from tests import reference_ops
    _check_unique_pairs(native.unique_pairs if kernels == "native"
                        else reference_ops.unique_pairs)


def _check_unique_pairs(unique_pairs: Callable[..., tuple[torch.Tensor, ...]]) -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(-50, 50, (400,), generator=gen)
    extreme = torch.cat([small, torch.tensor([-(1 << 63), (1 << 63) - 1, -(1 << 63)])])
    for ids, layout in itertools.product((small, extreme), ("any", "runs", "runs down", "one")):
        # Tags in any order (the one-sort path, then the ranked path); in
        # runs of one table each, as the trainer lays them out (a dedup per
        # run); runs in descending order; a single table.
        tags = torch.randint(0, 3, (ids.numel(),), generator=gen)
        if layout.startswith("runs"):
            tags = torch.sort(tags, descending=layout == "runs down").values
        elif layout == "one":
            tags = torch.full_like(ids, 2)
        pair_ids, pair_tags, inverse, counts = unique_pairs(ids, tags)
        pairs = list(zip(tags.tolist(), ids.tolist()))
        got = list(zip(pair_tags.tolist(), pair_ids.tolist()))
        assert len(got) == len(set(got)) == len(set(pairs))
        assert [got[i] for i in inverse.tolist()] == pairs
        assert counts.tolist() == [pairs.count(p) for p in got]


def test_a_table_restores_from_a_checkpoint_of_the_per_table_format() -> None:
    # Before every table became a TableGroup (of one, or of several), a table
    # saved its rows by its own row numbers along with its index
    # (index.ids[i] -> index.rows[i]); such checkpoints must still load.
    config = TableConfig(min_count=2, initial_capacity=16)
    ids, at = torch.tensor([10, -(1 << 63), 30]), torch.tensor([2, 0, 1])
    weights = torch.arange(3 * DIM, dtype=torch.float32).view(3, DIM)
    seen_once = 4242
    sketch = FrequencyFilter(config.min_count, config.filter_width, config.filter_depth)
    sketch.observe(torch.tensor([seen_once]), torch.tensor([1]))
    state = {f"filter.{k}": v for k, v in sketch.state_dict().items()}
    state.update({
        "index.ids": ids, "index.rows": at, "weights": weights,
        "momentum": torch.tensor([0.1, 0.2, 0.3]), "last_seen_ms": torch.tensor([5, 6, 7]),
        "row_ids": torch.empty(3, dtype=torch.int64), "live": torch.ones(3, dtype=torch.bool),
        "touched": torch.tensor([True, False, True]), "tombstones": torch.tensor([99]),
        "sweep_at": torch.tensor(0),
    })
    for table in (make_table("a", DIM, config), make_tables(["a", "b"], DIM, lambda _: config)["a"]):
        table.load_state_dict(state)
        exported = table.export_all()
        got_ids, got_rows = exported.upserted.ids, exported.upserted.values
        by_id = dict(zip(got_ids.tolist(), got_rows.tolist()))
        assert by_id == {i: weights[r].tolist() for i, r in zip(ids.tolist(), at.tolist())}
        delta = table.collect_delta()
        touched, tombstones = delta.upserted.ids, delta.evicted.ids
        assert sorted(touched.tolist()) == [-(1 << 63), 10]  # rows 0 and 2 were touched
        assert tombstones.tolist() == [99]
        # The filter came along: the id seen once before the checkpoint is admitted now.
        assert table.lookup(torch.tensor([seen_once]), now_ms=8).item() >= 0


def test_eviction_counters_only_grow_even_mid_sweep() -> None:
    # Metrics scrapes read the counters without the trainer's lock: a sweep
    # that frees stale and pruned rows must never show a value it later takes
    # back (Prometheus reads a decrease as a counter reset).
    config = TableConfig(ttl_s=1.0, initial_capacity=16, lr=0.1, prune_grace_s=0.0)
    group = make_tables(["a", "b"], DIM, lambda _: config)["a"].group
    tags = torch.tensor([0] * 6 + [1] * 6)
    rows = group.lookup(tags, torch.arange(12), now_ms=0)
    group.update(rows[:3], torch.full((3, DIM), -1.0))  # "a" 0-2 grow large
    group.lookup(tags[:6], torch.arange(6), now_ms=5_000)  # "a" seen again, "b" goes stale
    seen: list[int] = []
    evict = group.evict_rows

    def watched(*args: object, **kwargs: object) -> None:
        seen.append(int(group.counters["evicted"].sum()))
        evict(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(int(group.counters["evicted"].sum()))

    group.evict_rows = watched  # type: ignore[method-assign]
    limits = torch.tensor([0.2, 0.2])  # fresh rows ~0.03, grown ones ~0.4
    group.expire(now_ms=5_000, prune_below=limits)
    final = int(group.counters["evicted"].sum())
    assert seen and max(seen) <= final
    # "b" stale: evicted; "a" 3-5 fresh but small: pruned; "a" 0-2 kept.
    assert final == 6 and int(group.counters["pruned"].sum()) == 3 and len(group) == 3

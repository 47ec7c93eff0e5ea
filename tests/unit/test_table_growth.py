"""Tables grow without a step that pays for the whole table, in a compact layout.

Structural properties, not timings (timings are benchmarks/tables_throughput.py
--scale): growing never copies rows, an insert re-places a bounded number of
index entries whatever the table's size, memory per live row stays near the
minimum and memory_bytes() accounts for every tensor held; the narrow times
keep TTL exact when event time runs past the int32 range.
"""

from __future__ import annotations

import logging

import pytest
import torch

from streamrec.config import TableConfig
from streamrec.model.tables import reserve
from streamrec.model.tables.base import make_table
from streamrec.model.tables.group import TableGroup
from streamrec.model.tables.index import IdIndex
from streamrec.model.tables.reserve import ReservedArray

DIM = 16
DAY_MS = 86_400_000


def _ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(-(2**63), 2**63 - 1, (n,), generator=g))


def test_an_insert_moves_a_bounded_number_of_entries_whatever_the_index_size() -> None:
    # A rehash of the whole index (what a plain open-addressing table does when
    # it fills) moves every entry in one call: here no call moves more than a
    # few segments' worth (2^15 slots each), while the index grows to 1.2M.
    index = IdIndex(initial_slots=16)
    ids = _ids(1_200_000, 0)
    worst = 0
    for start in range(0, ids.numel(), 10_000):
        before = index.moved
        index.insert(ids[start: start + 10_000])
        worst = max(worst, index.moved - before)
    assert len(index) == ids.numel()
    assert index.moved > ids.numel()  # it did grow, many times
    assert worst <= 6 * (1 << 15) < ids.numel() / 6, worst
    assert torch.unique(index.lookup(ids)).numel() == ids.numel()


def test_rows_keep_their_place_in_memory_while_the_table_grows() -> None:
    group = TableGroup(["a", "b"], DIM, TableConfig(min_count=1, initial_capacity=16))
    ids = torch.arange(1000)
    tags = torch.zeros_like(ids)
    rows = group.lookup(tags, ids, now_ms=1)
    before = group.read(rows)
    address = group.weights.data_ptr()
    more = torch.arange(10**6, 10**6 + 200_000)
    group.lookup(more % 2, more, now_ms=2)
    assert group.weights.data_ptr() == address  # grown 200x: not copied
    assert torch.equal(group.read(rows), before)


def test_without_reserved_address_space_rows_grow_by_copying_and_keep_their_values(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(reserve, "_reserve", lambda nbytes: None)
    monkeypatch.setattr(reserve, "_refused", [])
    with caplog.at_level(logging.WARNING, logger="streamrec.model.tables.reserve"):
        array = ReservedArray(torch.float32, 1 << 20, (3,))
        ReservedArray(torch.int64, 1 << 20)
    assert not array.reserved and caplog.text.count("grow by copying") == 1
    array.ensure(5)[:5] = torch.arange(15, dtype=torch.float32).view(5, 3)
    grown = array.ensure(1000)
    assert grown.shape[0] >= 1000
    assert grown[:5].flatten().tolist() == list(range(15))
    assert bool((grown[5:] == 0).all())
    # A table on such arrays behaves the same.
    table = make_table("t", DIM, TableConfig(min_count=1, initial_capacity=16))
    ids = torch.arange(5000) * 7919
    rows = table.lookup(ids, now_ms=1)
    assert torch.equal(table.lookup(ids, now_ms=2), rows)
    assert torch.unique(rows).numel() == ids.numel()


def test_memory_per_live_row_is_within_one_and_a_half_times_the_minimum() -> None:
    # The minimum: the weights, one Adagrad scalar and the 64-bit id.
    minimum = DIM * 4 + 4 + 8
    group = TableGroup([f"f{i}" for i in range(26)], DIM,
                       TableConfig(min_count=1, initial_capacity=16))
    ids = _ids(400_000, 1)
    for start in range(0, ids.numel(), 20_000):
        part = ids[start: start + 20_000]
        group.lookup(part.remainder(26), part, now_ms=start)
    assert len(group) == ids.numel()
    assert group.memory_bytes() / len(group) <= 1.5 * minimum, group.memory_bytes() / len(group)


def _tensors(obj: object) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, ReservedArray):
            found.append(value.data)
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if isinstance(v, torch.Tensor))
            found.extend(v.data for v in value.values() if isinstance(v, ReservedArray))
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def test_memory_bytes_counts_every_tensor_the_table_holds() -> None:
    group = TableGroup(["a", "b", "c"], DIM,
                       TableConfig(min_count=2, ttl_s=1.0, initial_capacity=16))
    ids = _ids(120_000, 2)
    for step in range(3):
        group.lookup(ids.remainder(3), ids, now_ms=step * 1000)
    group.expire(10_000, max_rows=50_000)  # some free rows and deleted slots
    storages = {}
    for t in _tensors(group) + _tensors(group.index) + _tensors(group.filter):
        storages[t.untyped_storage().data_ptr(), t.data_ptr()] = t.numel() * t.element_size()
    held = sum(storages.values())
    assert held <= group.memory_bytes() <= 1.1 * held, (held, group.memory_bytes())


def test_times_stay_exact_when_event_time_runs_past_the_int32_range() -> None:
    # Times are int32 ms since a moving epoch: 40 days of event time pass it twice.
    table = make_table("t", DIM, TableConfig(min_count=1, ttl_s=10.0, initial_capacity=16))
    table.lookup(torch.tensor([1, 2]), now_ms=5)
    late = 40 * DAY_MS + 1
    table.lookup(torch.tensor([3]), now_ms=late - 9_999)
    table.lookup(torch.tensor([2]), now_ms=late - 10_001)
    assert table.expire(now_ms=late) == 2  # 1 (40 days old) and 2 (10.001 s old)
    state = table.state_dict()
    assert state["ids"].tolist() == [3]
    assert state["last_seen_ms"].tolist() == [late - 9_999]
    assert state["admitted_ms"].tolist() == [late - 9_999]
    # A row restored into a fresh table keeps its exact time.
    other = make_table("t", DIM, TableConfig(min_count=1, ttl_s=10.0, initial_capacity=16))
    other.load_state_dict(state)
    assert other.expire(now_ms=late) == 0
    assert other.expire(now_ms=late + 2) == 1


def test_deltas_hold_every_changed_row_whether_tracked_by_log_or_by_scan() -> None:
    # Changed rows are logged as they change, so a sync reads the log, not every
    # row's flag; the log is dropped when no one collects for long (a scan then).
    group = TableGroup(["a", "b", "c"], DIM, TableConfig(min_count=1, initial_capacity=16))
    views = [group.views[n] for n in ("a", "b", "c")]
    changed: list[set[int]] = [set(), set(), set()]

    def train(ids: torch.Tensor, tag: int, step: int) -> None:
        rows = group.lookup(torch.full_like(ids, tag), ids, now_ms=step)
        group.update(rows, torch.ones(ids.numel(), DIM))
        changed[tag].update(ids.tolist())

    def collect(tag: int) -> None:
        delta = views[tag].collect_delta()
        ids, values = delta.upserted.ids, delta.upserted.values
        assert sorted(ids.tolist()) == sorted(changed[tag])
        assert torch.equal(values, views[tag].read(views[tag].lookup(ids, train=False)))
        changed[tag].clear()

    train(torch.arange(100), 0, 1)
    train(torch.arange(50, 150), 1, 1)
    collect(0)
    train(torch.arange(90, 120), 0, 2)  # a step between two tables' collections
    train(torch.arange(200, 210), 2, 2)
    for tag in (1, 2, 0):
        collect(tag)
    for tag in range(3):  # nothing changed since
        collect(tag)
    train(torch.arange(10**6, 10**6 + 70_000), 1, 3)  # past the log's limit: a scan
    assert group._touched_log is None
    train(torch.arange(5), 2, 3)
    for tag in (2, 1, 0):
        collect(tag)
    assert group._touched_log == []

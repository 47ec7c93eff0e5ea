"""History features: per-id counts before each example, exact inside a batch."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from streamrec.config import TableConfig
from streamrec.model.history import HistoryFeatures, history_inputs, history_table_name
from streamrec.model.tables.table import DynamicEmbeddingTable


def users(ids: list[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=["user_id"], values=torch.tensor(ids),
                             lengths=torch.ones(len(ids), dtype=torch.int32), stride=len(ids))


def make(cap: float = 200.0) -> HistoryFeatures:
    name = history_table_name("user_id")
    table = DynamicEmbeddingTable(name, 2, TableConfig(initial_capacity=16, init_std=0.0))
    return HistoryFeatures(["user_id"], {name: table}, cap=cap)


def test_each_example_sees_only_earlier_outcomes_of_its_id() -> None:
    h = make()
    counts = h.counts(users([1, 1, 2, 1]), torch.tensor([1.0, 0.0, 1.0, 1.0]), now_ms=1)
    assert counts[:, 0].tolist() == [[0, 0], [1, 1], [0, 0], [2, 1]]
    h.commit()
    counts = h.counts(users([1, 2, 3]), torch.tensor([0.0, 0.0, 0.0]), now_ms=2)
    assert counts[:, 0].tolist() == [[3, 2], [1, 1], [0, 0]]


def test_an_examples_own_label_never_reaches_its_features() -> None:
    a = make().counts(users([5, 5, 5]), torch.tensor([0.0, 1.0, 0.0]), now_ms=1)
    b = make().counts(users([5, 5, 5]), torch.tensor([0.0, 1.0, 1.0]), now_ms=1)
    assert torch.equal(a, b)  # only the last label differs, and only later rows could see it


def test_scoring_without_labels_reads_stored_counts_and_changes_nothing() -> None:
    h = make()
    h.counts(users([1, 1]), torch.tensor([1.0, 1.0]), now_ms=1)
    h.commit()
    counts = h.counts(users([1, 1, 9]), None, now_ms=2)
    assert counts[:, 0].tolist() == [[2, 2], [2, 2], [0, 0]]
    h.commit()
    assert h.counts(users([1]), None, now_ms=3)[0, 0].tolist() == [2, 2]


def test_counts_are_capped_keeping_the_rate() -> None:
    h = make(cap=10)
    h.counts(users([1] * 40), torch.tensor([1.0, 0.0] * 20), now_ms=1)
    h.commit()
    n, c = h.counts(users([1]), None, now_ms=2)[0, 0].tolist()
    assert n == 10 and abs(c - 5) < 1e-5


def test_inputs_are_neutral_for_an_unseen_id() -> None:
    inputs = history_inputs(torch.zeros(1, 1, 2), torch.tensor([0.2]), strength=10)
    assert inputs.tolist() == [[0.0, 0.0]]
    clicky = history_inputs(torch.tensor([[[10.0, 9.0]]]), torch.tensor([0.2]), strength=10)
    assert clicky[0, 1] > 0


def test_grouped_history_tables_count_like_separate_ones() -> None:
    # Two history features whose ids overlap, looked up together through one
    # TableGroup, give the counts two separate tables give.
    from streamrec.model.tables.base import make_table, make_tables
    features = ["user_id", "item_id"]
    names = [history_table_name(f) for f in features]
    config = TableConfig(initial_capacity=16, init_std=0.0)
    separate = HistoryFeatures(features, {n: make_table(n, 2, config) for n in names})
    grouped_tables = make_tables(names, 2, lambda _: config)
    grouped = HistoryFeatures(features, grouped_tables)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        ids = torch.randint(0, 6, (2, 32), generator=gen)
        lengths = torch.randint(0, 2, (64,), generator=gen).to(torch.int32)  # some absent
        values = ids.reshape(-1)[lengths.to(torch.bool)]
        kjt = KeyedJaggedTensor(keys=features, values=values, lengths=lengths, stride=32)
        labels = torch.randint(0, 2, (32,), generator=gen).to(torch.float32)
        a = separate.counts(kjt, labels, now_ms=step)
        b = grouped.counts(kjt, labels, now_ms=step)
        assert torch.equal(a, b), step
        separate.commit()
        grouped.commit()
    assert float(b[..., 0].max()) > 1  # ids did repeat


def test_first_id_counts_and_examples_without_an_id_count_nothing() -> None:
    # tags = (5, 6), (), (5,), (7, 5), (5,): the first id of each example is its key.
    h = make()
    kjt = KeyedJaggedTensor(keys=["user_id"], values=torch.tensor([5, 6, 5, 7, 5, 5]),
                            lengths=torch.tensor([2, 0, 1, 2, 1], dtype=torch.int32), stride=5)
    counts = h.counts(kjt, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]), now_ms=1)
    assert counts[:, 0].tolist() == [[0, 0], [0, 0], [1, 1], [0, 0], [2, 1]]
    h.commit()
    after = h.counts(users([5, 6, 7]), None, now_ms=2)
    assert after[:, 0].tolist() == [[3, 2], [0, 0], [1, 1]]


def test_observed_outcomes_are_stored_at_once_in_order_and_asking_adds_nothing() -> None:
    # Outcomes reach the counts when they are known, not at the step; an
    # impression (no outcome yet) is scored with every outcome before it.
    h = make()
    outcomes = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    counts = h.observe(users([1, 1, 1, 2, 2]), outcomes, now_ms=1)
    assert counts[:, 0].tolist() == [[0, 0], [1, 1], [1, 1], [0, 0], [0, 0]]
    assert h.counts(users([1, 2]), None, now_ms=2)[:, 0].tolist() == [[2, 1], [1, 1]]


def test_observing_labels_counts_like_the_step_does() -> None:
    ids, labels = [3, 1, 3, 3, 2, 1], torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    stepped, observed = make(cap=2.5), make(cap=2.5)
    before = stepped.counts(users(ids), labels, now_ms=1)
    stepped.commit()
    outcomes = torch.stack([torch.ones_like(labels), labels], dim=1)
    assert torch.equal(observed.observe(users(ids), outcomes, now_ms=1), before)
    probe = users([1, 2, 3])
    assert torch.equal(observed.counts(probe, None, 2), stepped.counts(probe, None, 2))

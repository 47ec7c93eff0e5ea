"""Wide terms: learned one outcome at a time, in order, and never from an example's own label."""

from __future__ import annotations

import itertools

import pytest
import torch

from streamrec.config import load_config
from streamrec.ingest.batch import Batcher, KeyedJaggedTensor
from streamrec.ingest.event import EXAMPLE, Event
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.joiner import Joiner
from streamrec.model.wide import MAX_TERM_KEYS, TermColumns, cross_keys
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.loop import TrainingLoop
from streamrec.trainer.trainer import OnlineTrainer

WIDE = {"model.wide_terms": "user_id,user_id*item_id", "model.history_features": "",
        "trainer.warmup_batch_size": "0", "trainer.max_batch_delay_s": "3600"}


def trainer_with(**overrides: str) -> OnlineTrainer:
    return OnlineTrainer.from_config(load_config(env={}, overrides={**WIDE, **overrides}))


def test_each_example_is_scored_with_the_outcomes_before_it_and_not_its_own() -> None:
    trainer = trainer_with()
    batcher = Batcher(trainer.features, trainer.dense_features)
    events = [Event(EXAMPLE, 1, 10 + k, k, label=1.0) for k in range(3)] + \
        [Event(EXAMPLE, 2, 10, 3, label=0.0)]
    batch = batcher.build(events)
    sums = trainer.wide.learn(batch.sparse, torch.zeros(4), torch.stack(
        [torch.ones(4), batch.labels], dim=1), now_ms=0)
    assert sums[0] == 0 and 0 < sums[1] < sums[2]  # user 1's clicks, one by one
    assert sums[3] == 0  # another user: nothing learned yet
    after = trainer.wide.logits(batch.sparse, now_ms=0)
    assert after[2] > sums[2] and after[3] < 0  # each learned its own outcome after


def test_an_impression_without_its_label_reads_without_learning() -> None:
    trainer = trainer_with()
    batch = Batcher(trainer.features, []).build([Event(EXAMPLE, 1, 10, 0)])
    before = {n: len(t) for n, t in trainer.tables.items()}
    sums = trainer.wide.learn(batch.sparse, torch.zeros(1), torch.zeros(1, 2), now_ms=0)
    assert sums.tolist() == [0.0]
    assert {n: len(t) for n, t in trainer.tables.items()} == before  # nothing admitted


def test_a_click_on_a_fake_negative_undoes_the_negative() -> None:
    # (1, 0) learned on arrival, then (0, 1) at the click: the weight ends
    # above zero, as for a clicked impression learned once.
    trainer = trainer_with()
    batch = Batcher(trainer.features, []).build([Event(EXAMPLE, 1, 10, 0)] * 2)
    trainer.wide.learn(batch.sparse, torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                       now_ms=0)
    assert float(trainer.wide.logits(batch.sparse, now_ms=0)[0]) > 0


def test_keys_below_the_admission_count_learn_nothing() -> None:
    trainer = trainer_with(**{"table_defaults.min_count": "2"})
    batch = Batcher(trainer.features, []).build([Event(EXAMPLE, 1, 10, 0)])
    outcome = torch.tensor([[1.0, 1.0]])
    trainer.wide.learn(batch.sparse, torch.zeros(1), outcome, now_ms=0)
    assert float(trainer.wide.logits(batch.sparse, now_ms=0)[0]) == 0  # seen once
    trainer.wide.learn(batch.sparse, torch.zeros(1), outcome, now_ms=0)
    assert float(trainer.wide.logits(batch.sparse, now_ms=0)[0]) > 0  # admitted at the second


@pytest.mark.parametrize("joined", [False, True], ids=["direct", "through the joiner"])
def test_no_score_depends_on_its_own_label_or_a_later_one(joined: bool) -> None:
    # Flip one example's label: the scores of it and every example before it
    # stay as they were, in the step's test-then-train scores and in those
    # the loop takes on arrival through the joiner.
    events = list(SyntheticStream(default()).events(1_500))
    flip = 1_100

    def scores(stream: list[Event]) -> list[float]:
        config = load_config(env={}, overrides={**WIDE, "trainer.batch_size": "256"})
        trainer = OnlineTrainer.from_config(config)
        out: list[float] = []
        step = trainer.train_batch

        def spy(*args: object, **kwargs: object) -> object:
            result = step(*args, **kwargs)  # type: ignore[arg-type]
            out.extend(result.probs.tolist())
            return result

        trainer.train_batch = spy  # type: ignore[method-assign]
        joiner = Joiner(["click"], window_s=10.0) if joined else None
        TrainingLoop(trainer, IteratorSource(stream), config, joiner=joiner).run()
        return out

    flipped = [e._replace(label=1.0 - (e.label or 0.0)) if k == flip else e
               for k, e in enumerate(events)]
    before, after = scores(events), scores(flipped)
    assert len(before) == len(events)
    assert before[:flip + 1] == after[:flip + 1]
    assert before[flip + 1:] != after[flip + 1:]


def _lists(lengths: list[tuple[int, int]]) -> tuple[KeyedJaggedTensor, list[list[list[int]]]]:
    """Features a and b with these (len a, len b) per example, and their values."""
    a = [[100 * e + i for i in range(n)] for e, (n, _) in enumerate(lengths)]
    b = [[-100 * e - i for i in range(m)] for e, (_, m) in enumerate(lengths)]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b"], values=torch.tensor([v for vs in a + b for v in vs], dtype=torch.int64),
        lengths=torch.tensor([n for n, _ in lengths] + [m for _, m in lengths]))
    return kjt, [a, b]


def key_of(values: tuple[int, ...]) -> int:
    key = torch.tensor(0)
    for v in values:
        key = cross_keys(key, torch.tensor(v))
    return int(key)


def test_a_cross_keys_the_first_max_keys_combinations_of_each_example() -> None:
    lengths = [(3, 4), (0, 2), (5, 3), (1, 1), (2, 0)]
    sparse, (a, b) = _lists(lengths)
    for limit in (100, 7, 3, 1):
        columns = TermColumns(sparse, max_keys=limit)
        for term, values in ((["a", "b"], (a, b)), (["b", "a"], (b, a)), (["a"], (a,))):
            example, key = columns.term_keys(term)
            want = [(e, key_of(combination)) for e in range(len(lengths))
                    for combination in list(itertools.product(*(v[e] for v in values)))[:limit]]
            assert example.tolist() == [e for e, _ in want], (limit, term)
            assert key.tolist() == [k for _, k in want], (limit, term)
        over = [max(0, n * m - limit) for n, m in lengths]
        dropped = columns.dropped(["a", "b"])
        assert dropped is not None and dropped.tolist() == over


def test_two_long_lists_cross_into_max_keys_per_example_and_the_rest_are_counted() -> None:
    # Two of the decoder's longest lists make a million combinations per example.
    trainer = trainer_with(**{"model.sparse_features": "user_id,item_id,a,b",
                              "model.wide_terms": "a*b"})
    events = [Event(EXAMPLE, 1, 10, 0, features={"a": tuple(range(1024)),
                                                 "b": tuple(range(-1024, 0))}, label=1.0)] * 4
    batch = Batcher(trainer.features, []).build(events)
    outcomes = torch.tensor([[1.0, 1.0]] * 3 + [[0.0, 0.0]])  # the last only read
    trainer.wide.learn(batch.sparse, torch.zeros(4), outcomes, now_ms=0)
    assert len(trainer.tables["a*b#wide"]) == MAX_TERM_KEYS
    assert trainer.wide.dropped_keys == {"a*b#wide": 3 * (1024 * 1024 - MAX_TERM_KEYS)}

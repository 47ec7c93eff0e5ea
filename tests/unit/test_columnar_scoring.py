"""Columnar scoring (serving/scoring.py) gives the scores of the row-by-row reference."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.config import load_config
from streamrec.ingest.batch import Batcher
from streamrec.serving.replica import ModelReplica
from streamrec.serving.scoring import columns_of_rows
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.parameters import TrainerParameters
from streamrec.trainer.trainer import OnlineTrainer

CONFIGS = {
    "plain": {"model.history_features": "", "model.wide_terms": ""},
    "no wide terms": {"model.wide_terms": ""},
    "wide crosses of lists": {"model.wide_terms": "user_id,country*category,category*hour*country"},
    "history": {},
    "pruning": {"table_defaults.prune_alpha": "0.001"},
    "shared table": {"tables.ids.features": "user_id,item_id"},
    "deep": {"model.hidden": "16,8"},
}


def trained_replica(extra: dict[str, str]) -> ModelReplica:
    torch.set_num_threads(1)
    config = load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price", "trainer.batch_size": "128", **extra})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(trainer.features, trainer.dense_features)
    events = list(SyntheticStream(default()).events(1500))
    for start in range(0, len(events), 128):
        trainer.train_batch(batcher.build(events[start:start + 128]))
    replica = ModelReplica(CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    return replica


def category(rng: random.Random) -> Any:
    # Known (c0..c39) and unknown strings, integer ids, unknown integer ids.
    return rng.choice([f"c{rng.randrange(60)}", rng.randrange(-5, 50), 2**62 + rng.randrange(9)])


def random_request(rng: random.Random) -> tuple[int, list[int], dict[str, tuple[Any, ...]],
                                                 dict[str, list[Any]]]:
    n = rng.randrange(1, 40)
    items = [rng.choice([rng.randrange(1, 400), rng.randrange(10**6, 10**7)]) for _ in range(n)]
    shared: dict[str, tuple[Any, ...]] = {}
    if rng.random() < 0.7:
        shared["country"] = tuple(f"k{rng.randrange(10)}" for _ in range(rng.randrange(0, 4)))
    if rng.random() < 0.7:
        shared["hour"] = (rng.randrange(30),)
    if rng.random() < 0.5:
        shared["category"] = tuple(category(rng) for _ in range(rng.randrange(1, 3)))
    if rng.random() < 0.5:
        shared["price"] = (rng.choice([3.5, -2.0, 17, 0.0]),)
    columns: dict[str, list[Any]] = {}
    if rng.random() < 0.7:
        columns["category"] = [category(rng) for _ in range(n)]
    if rng.random() < 0.7:
        columns["price"] = [rng.choice([rng.uniform(-100, 1000), rng.randrange(50)])
                            for _ in range(n)]
    if rng.random() < 0.3:
        columns["hour"] = [rng.randrange(24) for _ in range(n)]
    return rng.choice([rng.randrange(1, 300), 10**9 + rng.randrange(9)]), items, shared, columns


@pytest.mark.parametrize("extra", CONFIGS.values(), ids=CONFIGS.keys())
def test_columnar_scores_equal_the_row_by_row_reference(extra: dict[str, str]) -> None:
    replica = trained_replica(extra)
    rng = random.Random(7)
    for _ in range(60):
        user, items, shared, columns = random_request(rng)
        got, version = replica.predict_columns(user, items, shared, columns)
        rows = [(user, item, {**shared, **{k: (v[i],) for k, v in columns.items()}})
                for i, item in enumerate(items)]
        want, _ = replica.score_rows(rows)
        assert version == 1
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=0)


def test_terms_keyed_at_once_score_to_the_bit_as_the_row_path() -> None:
    """Every feature one value per candidate (the common request): all wide terms
    are keyed in one pass (``_TermKeys.many``), in the row path's order."""
    replica = trained_replica({})
    rng = random.Random(3)
    for _ in range(20):
        user, n = rng.randrange(1, 300), rng.randrange(1, 60)
        items = [rng.randrange(1, 400) for _ in range(n)]
        shared = {"country": (f"k{rng.randrange(10)}",), "hour": (rng.randrange(30),)}
        columns = {"category": [category(rng) for _ in range(n)]}
        got, _ = replica.predict_columns(user, items, shared, columns)
        want, _ = replica.score_rows([(user, item, {**shared, "category": (columns["category"][i],)})
                                      for i, item in enumerate(items)])
        assert got == want


def test_a_request_without_features_scores_as_features_all_missing() -> None:
    replica = trained_replica({})
    got, _ = replica.predict_columns(5, [1, 2, 3])
    want, _ = replica.score_rows([(5, item, {}) for item in [1, 2, 3]])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=0)


def test_a_column_of_another_length_than_the_candidates_is_refused() -> None:
    replica = trained_replica({})
    with pytest.raises(ValueError, match="column 'category' has 2 values for 3 candidates"):
        replica.predict_columns(5, [1, 2, 3], {}, {"category": ["c1", "c2"]})


def test_per_candidate_maps_form_columns_only_with_one_value_of_the_same_names() -> None:
    assert columns_of_rows([{"a": (1,), "b": ("x",)}, {"a": (2,), "b": ("y",)}]) == \
        {"a": [1, 2], "b": ["x", "y"]}
    assert columns_of_rows([{"a": (1,)}, {"b": (2,)}]) is None
    assert columns_of_rows([{"a": (1, 2)}, {"a": (3,)}]) is None
    assert columns_of_rows([{"a": ()}, {"a": (3,)}]) is None


def test_a_model_with_settings_the_columnar_path_does_not_know_is_scored_row_by_row(
        monkeypatch) -> None:
    # A part of the model added later (a setting this path does not know) must
    # not be skipped by the columnar path: such a model is scored by the
    # reference path.
    replica = trained_replica({})
    state = replica._state
    spec = json.loads(state.spec)
    spec["model"]["later_terms"] = ["user_id*category"]
    monkeypatch.setattr(state, "spec", json.dumps(spec))
    rows_scored: list = []
    score = state.score
    monkeypatch.setattr(state, "score", lambda rows: rows_scored.extend(rows) or score(rows))
    got, _ = replica.predict_columns(5, [1, 2, 3], {"country": ("k1",)},
                                     {"category": ["c1", "c2", 7]})
    assert [item for _, item, _ in rows_scored] == [1, 2, 3]
    assert rows_scored[2][2] == {"country": ("k1",), "category": (7,)}
    want, _ = replica.score_rows(rows_scored)
    assert got == want
    with pytest.raises(ValueError, match="column 'category' has 2 values for 3 candidates"):
        replica.predict_columns(5, [1, 2, 3], {}, {"category": ["c1", "c2"]})


def test_request_lists_crossed_past_max_keys_score_as_the_row_path() -> None:
    replica = trained_replica(CONFIGS["wide crosses of lists"])
    rng = random.Random(5)
    for columnar_category in (False, True):
        n = rng.randrange(2, 30)
        items = [rng.randrange(1, 400) for _ in range(n)]
        # country*category: 150 x 2 combinations, category*hour*country 150 per candidate.
        shared: dict[str, tuple[Any, ...]] = {
            "country": tuple(f"k{i % 10}" for i in range(150)), "hour": (3,)}
        columns: dict[str, list[Any]] = {}
        if columnar_category:
            columns["category"] = [category(rng) for _ in range(n)]
        else:
            shared["category"] = (category(rng), category(rng))
        got, _ = replica.predict_columns(1, items, shared, columns)
        want, _ = replica.score_rows([(1, item, {**shared, **{k: (v[i],) for k, v in
                                                                columns.items()}})
                                      for i, item in enumerate(items)])
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=0)

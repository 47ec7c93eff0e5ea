"""In-batch adaptation (trainer/adapt.py): honest, equal to its per-event
definition, and worth having on a bursty stream."""

from __future__ import annotations

import math
import random

import pytest
import torch

from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.config import ModelConfig, load_config
from streamrec.errors import ConfigError
from streamrec.model.adapt import in_batch_correction
from streamrec.model.wide import TermColumns
from streamrec.trainer.progressive import exact_auc
from streamrec.trainer.trainer import OnlineTrainer


def _events(n: int, seed: int = 0, users: int = 5) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = rng.randrange(users)
        genres = tuple(rng.sample(["a", "b", "c", "d"], rng.randint(0, 2)))
        out.append(Event("example", u, rng.randrange(20), 1_000 + i, features={
            "genres": genres, "gender": ("f" if u % 2 else "m",)},
            label=float(rng.random() < 0.5)))
    return out


def _batch(events: list[Event]):
    return Batcher(["user_id", "item_id", "genres", "gender"], []).build(events)


def _reference(events: list[Event], terms: list[list[str]], logits: list[float],
               weights: list[float], strength: float) -> list[float]:
    """The module docstring's formula, event by event, in plain Python."""
    def values(e: Event, feature: str) -> list[object]:
        if feature == "user_id":
            return [e.user_id]
        if feature == "item_id":
            return [e.item_id]
        return list(e.features.get(feature, ()))

    total = [0.0] * len(events)
    for w, term in zip(weights, terms):
        keys = [[()]] * len(events)
        for i, e in enumerate(events):
            combos: list[tuple[object, ...]] = [()]
            for f in term:
                combos = [c + (v,) for c in combos for v in values(e, f)]
            keys[i] = combos
        residual = [e.label - 1 / (1 + math.exp(-(z + t)))
                    for e, z, t in zip(events, logits, total)]
        add = []
        for i in range(len(events)):
            per_key = []
            for key in keys[i]:
                earlier = [residual[j] for j in range(i) if key in keys[j]]
                per_key.append(sum(earlier) / (len(earlier) + strength))
            add.append(w * sum(per_key) / len(per_key) if per_key else 0.0)
        total = [t + a for t, a in zip(total, add)]
    return total


def test_the_correction_equals_its_per_event_definition() -> None:
    events = _events(60)
    batch = _batch(events)
    logits = torch.linspace(-1, 1, len(events))
    terms = [["user_id"], ["user_id", "genres"], ["genres"], ["genres", "gender"]]
    weight = torch.tensor([3.0, 2.0, 0.5, 1.0])
    got = in_batch_correction(batch.sparse, terms, batch.labels, logits, weight, 4.0)
    want = _reference(events, terms, logits.tolist(), weight.tolist(), 4.0)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert any(abs(v) > 0.1 for v in want)  # the stream does give it something to learn


def test_an_example_is_corrected_only_by_the_labels_before_it() -> None:
    # Progressive metrics stay test-then-train: flipping example k's label
    # moves no correction up to and including k, and moves later ones.
    events = _events(40)
    logits = torch.zeros(len(events))
    terms = [["user_id"], ["user_id", "genres"]]
    weight = torch.tensor([3.0, 3.0])
    base = _batch(events)
    before = in_batch_correction(base.sparse, terms, base.labels, logits, weight, 10.0)
    k = 20
    flipped = events[:k] + [events[k]._replace(label=1.0 - events[k].label)] + events[k + 1:]
    fb = _batch(flipped)
    after = in_batch_correction(fb.sparse, terms, fb.labels, logits, weight, 10.0)
    # (Equal up to float rounding: the prefix sums run over the whole sorted batch.)
    assert torch.allclose(before[:k + 1], after[:k + 1], atol=1e-6)
    assert (before[k + 1:] - after[k + 1:]).abs().max() > 0.01


def test_a_cross_that_groups_examples_as_an_earlier_term_adds_nothing() -> None:
    # gender is constant per user here: user_id*gender would only add the
    # user's correction a second time.
    events = _events(50)
    batch = _batch(events)
    logits = torch.zeros(len(events))
    alone = in_batch_correction(batch.sparse, [["user_id"]], batch.labels, logits,
                                torch.tensor([3.0]), 10.0)
    both = in_batch_correction(batch.sparse, [["user_id"], ["user_id", "gender"]],
                               batch.labels, logits, torch.tensor([3.0, 3.0]), 10.0)
    assert torch.allclose(alone, both, atol=1e-6)


def test_term_keys_cross_every_value_of_a_list_feature() -> None:
    events = [Event("example", 7, 1, 1, features={"genres": ("a", "b"), "gender": ("f",)},
                    label=1.0),
              Event("example", 8, 1, 2, features={"genres": (), "gender": ("m",)}, label=0.0)]
    example, key = TermColumns(_batch(events).sparse).term_keys(["user_id", "genres"])
    assert example.tolist() == [0, 0]  # two keys for the first, none for the second
    assert key[0] != key[1]


def test_in_batch_adaptation_is_off_by_default_and_bad_terms_are_refused() -> None:
    # Off by default: a replica has no labels to adapt with.
    assert ModelConfig(sparse_features=["user_id", "item_id", "genres"]).in_batch_terms == []
    terms = ["user_id", "user_id*genres"]
    assert ModelConfig(sparse_features=["user_id", "item_id", "genres"],
                       in_batch_terms=terms).in_batch_terms == terms
    with pytest.raises(ConfigError, match="model.in_batch_terms"):
        load_config(env={}, overrides={"model.in_batch_terms": "user_id*genres"})
    with pytest.raises(ConfigError, match="model.in_batch_terms"):
        ModelConfig(in_batch_terms=["user_id*user_id"])
    assert load_config(env={}, overrides={"model.in_batch_terms": ""}).model.in_batch_terms == []


def test_distributed_training_refuses_in_batch_terms_naming_the_field() -> None:
    config = load_config(env={}, overrides={"model.history_features": "",
                                            "model.in_batch_terms": "user_id"})
    with pytest.raises(ConfigError, match="model.in_batch_terms"):
        OnlineTrainer.from_config(config, distributed=True)


def _bursty_stream(n_users: int = 300, burst: int = 60, seed: int = 0) -> list[Event]:
    """Each user's events come in one burst; each user likes one genre far
    more than the others. Only what is learned inside a burst helps."""
    rng = random.Random(seed)
    genres = ["a", "b", "c", "d"]
    out = []
    t = 0
    for u in range(n_users):
        liked = rng.choice(genres)
        bias = rng.gauss(0.0, 1.0)
        for _ in range(burst):
            g = rng.choice(genres)
            logit = bias + (2.0 if g == liked else -1.0)
            out.append(Event("example", u, rng.randrange(500), t, features={"genres": (g,)},
                             label=float(rng.random() < 1 / (1 + math.exp(-logit)))))
            t += 1000
    return out


def _progressive_auc(settings: dict[str, str], events: list[Event]) -> float:
    torch.manual_seed(0)
    config = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id,genres",
                                            "trainer.batch_size": "2048",
                                            "trainer.warmup_batch_size": "0", **settings})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, [])
    probs = []
    for start in range(0, len(events), 2048):
        probs.append(trainer.train_batch(batcher.build(events[start:start + 2048])).probs)
    labels = torch.tensor([e.label for e in events])
    return exact_auc(torch.cat(probs), labels)


def test_in_batch_adaptation_learns_bursts_that_batch_training_cannot() -> None:
    torch.set_num_threads(1)
    events = _bursty_stream()
    with_terms = _progressive_auc({"model.in_batch_terms": "user_id,user_id*genres",
                                   "model.wide_terms": ""}, events)
    without = _progressive_auc({"model.in_batch_terms": "", "model.wide_terms": ""}, events)
    assert with_terms > without + 0.03, (with_terms, without)


def test_wide_terms_learn_bursts_that_batch_training_cannot() -> None:
    # The same bursts, learned one outcome at a time by the wide terms (which,
    # unlike the in-batch terms, replicas serve too).
    torch.set_num_threads(1)
    events = _bursty_stream()
    with_terms = _progressive_auc({"model.wide_terms": "user_id,user_id*genres"}, events)
    without = _progressive_auc({"model.wide_terms": ""}, events)
    assert with_terms > without + 0.03, (with_terms, without)

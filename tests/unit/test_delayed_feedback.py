"""Joined streams: served-time metrics and delayed feedback, through the training loop."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batch, Batcher
from streamrec.ingest.event import EXAMPLE, Event
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.joiner import Joiner
from streamrec.config import AppConfig, load_config
from streamrec.synthetic import SyntheticStream, production
from streamrec.trainer.loop import TrainingLoop
from streamrec.trainer.metrics import TrainerMetrics
from streamrec.trainer.quality import QualityMetrics
from streamrec.trainer.trainer import OnlineTrainer

# A short window next to the stream, so that a few windows pass in a test.
STREAM = dataclasses.replace(production(), join_window_s=10.0, click_delay_median_s=1.0)
IMPRESSIONS = 16_000
SETTINGS = {"model.sparse_features": "user_id,item_id,category,country,hour,tags",
            "model.dense_features": "price", "ingest.join_window_s": "10",
            "trainer.batch_size": "1024"}


def run_joined(mode: str, trainer: OnlineTrainer | None = None,
               events: list[Event] | None = None,
               quality: QualityMetrics | None = None,
               config: AppConfig | None = None) -> TrainingLoop:
    config = config or load_config(env={}, overrides={**SETTINGS, "ingest.delayed_feedback": mode})
    trainer = trainer or OnlineTrainer.from_config(config)
    joiner = Joiner(["click"], window_s=10.0, delayed_feedback=mode)
    if events is None:
        events = list(SyntheticStream(STREAM).joined_events(IMPRESSIONS))
    loop = TrainingLoop(trainer, IteratorSource(events), config, quality=quality, joiner=joiner)
    loop.run()
    return loop


@pytest.mark.parametrize("mode", ["wait", "fake_negative"])
def test_no_training_batch_is_one_label_because_of_join_timing(mode: str) -> None:
    # Clicks join within seconds, non-clicks only when the window closes: the
    # batches must mix both all along, from the first one.
    torch.set_num_threads(1)
    config = load_config(env={}, overrides={**SETTINGS, "ingest.delayed_feedback": mode})
    trainer = OnlineTrainer.from_config(config)
    means: list[float] = []
    train = trainer.train_batch

    def spy(batch: Batch, *args: object) -> object:
        means.append(float(batch.labels.mean()))
        return train(batch, *args)  # type: ignore[arg-type]

    trainer.train_batch = spy  # type: ignore[method-assign]
    run_joined(mode, trainer)
    assert len(means) > 10
    assert all(0.03 < m < 0.6 for m in means[:-1]), means  # (the last one: the stream's tail)


@pytest.mark.parametrize("mode", ["wait", "fake_negative"])
def test_progressive_metrics_of_a_joined_stream_are_those_of_the_scores_served(mode: str) -> None:
    # Scored at training time, a joined stream looked better than it is (each
    # negative scored after its window's clicks were learned: AUC far above
    # the labeled form's) and worse than a constant (batches of one label).
    # Scored on arrival, every impression counts once, with what serving would
    # have shown: no better than learning from labels known at once, and,
    # once past the cold start, better than predicting the click rate.
    torch.set_num_threads(1)
    loop = run_joined(mode)
    labeled = list(SyntheticStream(STREAM).events(IMPRESSIONS))
    config = load_config(env={}, overrides=SETTINGS)
    reference, learned = OnlineTrainer.from_config(config), QualityMetrics()
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    for start in range(0, IMPRESSIONS, 1024):
        batch = batcher.build(labeled[start:start + 1024])
        learned.record_step(reference.train_batch(batch).probs, batch)
    p = loop.quality.progress
    assert p.examples == IMPRESSIONS
    assert p.positives == sum(e.label or 0.0 for e in labeled)
    rate = p.positives / IMPRESSIONS
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert 0.55 < p.auc < learned.progress.auc + 0.01
    # Past the cold start (the last 10,000 labels): better than a constant.
    assert p.window_logloss < constant


def test_fake_negative_weights_keep_predictions_calibrated() -> None:
    # Every impression is learned as a negative at once and again as a
    # positive when clicked: unweighted, the model would predict
    # p / (1 + p) (23% for a 30% click rate).
    torch.set_num_threads(1)
    rng = random.Random(0)
    config = load_config(env={}, overrides={
        "model.embedding_dim": "2", "model.history_features": "",
        "trainer.warmup_batch_size": "0", "trainer.batch_size": "512"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    joiner = Joiner(["click"], window_s=1, delayed_feedback="fake_negative")
    examples: list[Event] = []
    for k in range(60_000):
        user, item = rng.randrange(20), rng.randrange(20)
        raw = [Event("impression", user, item, k, request_id=f"r{k}", predicted=0.5)]
        if rng.random() < 0.3:
            raw.append(Event("click", user, item, k, request_id=f"r{k}"))
        examples += joiner.push(raw)
    examples += joiner.flush()
    observed = sum(e.label or 0.0 for e in examples) / len(examples)
    assert abs(observed - 0.3 / 1.3) < 0.01
    for start in range(0, len(examples), 512):
        chunk = examples[start:start + 512]
        trainer.train_batch(batcher.build(chunk), torch.tensor([e.fake_negative for e in chunk]))
    probe = batcher.build([Event(EXAMPLE, u, i, 60_000, label=0.0)
                           for u in range(20) for i in range(20)])
    assert abs(float(trainer.predict(probe).mean()) - 0.3) < 0.02


def test_the_scores_replicas_served_are_reported_per_model_version() -> None:
    torch.set_num_threads(1)
    registry = CollectorRegistry()
    config = load_config(env={}, overrides={"trainer.batch_size": "64"})
    trainer, quality = OnlineTrainer.from_config(config), QualityMetrics()
    TrainerMetrics(trainer, quality, registry=registry)
    events: list[Event] = []
    rng = random.Random(1)
    for k in range(2_000):
        clicked = rng.random() < 0.2
        version = 1 + k // 100  # 20 versions; the newest 8 are reported
        # Version 20 ranks clicks well; version 19 serves noise, 2x too high.
        score = (0.6 if clicked else 0.1) if version == 20 else 0.8 * rng.random()
        events.append(Event("impression", k % 7, k % 11, 1_000 * k, request_id=f"r{k}",
                            served_score=score, model_version=version))
        if clicked:
            events.append(Event("click", k % 7, k % 11, 1_000 * k + 500, request_id=f"r{k}"))
    run_joined("wait", trainer, events, quality, config)
    get = registry.get_sample_value
    assert get("streamrec_trainer_served_version_auc", {"model_version": "20"}) == 1.0
    assert abs(get("streamrec_trainer_served_version_auc", {"model_version": "19"}) - 0.5) < 0.2
    calibration = get("streamrec_trainer_served_version_calibration", {"model_version": "19"})
    assert 1.4 < calibration < 2.8
    assert get("streamrec_trainer_served_version_scores", {"model_version": "19"}) == 100
    assert get("streamrec_trainer_served_version_auc", {"model_version": "12"}) is None
    assert get("streamrec_trainer_served_version_auc", {"model_version": "13"}) is not None
    assert get("streamrec_trainer_served_scores_total") == 2_000
    assert 0.5 < get("streamrec_trainer_served_auc") < 1.0


TRAINED = list(SyntheticStream(STREAM).events(4_000))


def served_scores(events: list[Event]) -> dict[str, float]:
    """The score each impression was given on arrival, by request, in one run of the loop."""
    config = load_config(env={}, overrides={"trainer.batch_size": "4096",
                                            "trainer.max_batch_delay_s": "3600"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    for start in range(0, 4_000, 500):  # a model that reads its history features
        trainer.train_batch(batcher.build(TRAINED[start:start + 500]))
    steps = trainer.steps
    joiner = Joiner(["click"], window_s=10.0, delayed_feedback="fake_negative")
    scores: dict[str, float] = {}
    annotate = joiner.annotate

    def spy(scored, released=()):  # type: ignore[no-untyped-def]
        assert trainer.steps == steps  # (no batch filled: no step changes the scores)
        scored = list(scored)
        scores.update((e.request_id, e.predicted) for e in scored)
        return annotate(scored, released)

    joiner.annotate = spy  # type: ignore[method-assign]
    TrainingLoop(trainer, IteratorSource(events), config, joiner=joiner).run()
    return scores


def test_a_click_reaches_the_next_impressions_score_before_any_step() -> None:
    # A replica serves the history counts of every label known so far, not of
    # the steps taken: user 1's click on r1 changes the score of its next
    # impression, r2, in the same poll, long before a batch fills.
    torch.set_num_threads(1)
    shown = [Event("impression", 1, 7, 0, request_id="r1"),
             Event("impression", 1, 8, 5_000, request_id="r2")]
    clicked = served_scores([shown[0], Event("click", 1, 7, 2_000, request_id="r1"), shown[1]])
    ignored = served_scores(shown)
    assert clicked["r1"] == ignored["r1"]
    assert clicked["r2"] != ignored["r2"]


def test_labeled_examples_learn_the_same_through_the_joiner_as_without() -> None:
    # Through the joiner, outcomes reach the history counts on arrival and the
    # step takes the counts observed then: the same features as the step
    # computing them itself from the stored counts and the batch. (Wide terms
    # learn on arrival with the model of that moment, so they are left out:
    # tests/unit/test_wide_terms.py.)
    torch.set_num_threads(1)
    events = list(SyntheticStream(STREAM).events(5_000))
    overrides = {**SETTINGS, "trainer.max_batch_delay_s": "3600", "model.wide_terms": ""}
    config = load_config(env={}, overrides=overrides)
    trainers, aucs = [], []
    for joiner in (None, Joiner(["click"], window_s=10.0)):
        trainer = OnlineTrainer.from_config(config)
        loop = TrainingLoop(trainer, IteratorSource(events), config, joiner=joiner)
        loop.run()
        trainers.append(trainer)
        aucs.append(loop.quality.progress.auc)
    direct, joined = trainers
    assert joined.steps == direct.steps > 3
    assert aucs[0] == aucs[1]
    for name, table in direct.tables.items():
        mine, other = table.export_all().upserted, joined.tables[name].export_all().upserted
        assert torch.equal(mine.ids, other.ids), name
        assert torch.allclose(mine.values, other.values, atol=1e-6), name


def test_an_example_trains_on_the_counts_its_impression_was_served_with() -> None:
    # The click on r1 is learned with the counts r1 was scored with on arrival
    # (user 5 unseen: zeros), not with those at the click (which hold r1's own
    # fake negative): no skew between what the model learns from and what it
    # serves. And the click counts r1 as one showing, clicked.
    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "4096",
                                            "trainer.max_batch_delay_s": "3600"})
    trainer = OnlineTrainer.from_config(config)
    learned: list[tuple[list[float], list[list[float]]]] = []
    train = trainer.train_batch

    def spy(batch: Batch, *args: object, **kwargs: object) -> object:
        history = args[2] if len(args) > 2 else kwargs.get("history")
        learned.append((batch.labels.tolist(), history[:, 0].tolist()))  # type: ignore[index]
        return train(batch, *args, **kwargs)  # type: ignore[arg-type]

    trainer.train_batch = spy  # type: ignore[method-assign]
    events = [Event("impression", 5, 7, 0, request_id="r1"),
              Event("impression", 6, 8, 1_000, request_id="r2"),
              Event("click", 5, 7, 2_000, request_id="r1")]
    joiner = Joiner(["click"], window_s=10.0, delayed_feedback="fake_negative")
    TrainingLoop(trainer, IteratorSource(events), config, joiner=joiner).run()
    assert learned == [([0.0, 0.0, 1.0], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])]
    user = trainer.history.features.index("user_id")
    probe = Batcher(config.model.sparse_features, []).build([Event(EXAMPLE, 5, 9, 3_000)])
    assert trainer.history.counts(probe.sparse, None, 3_000)[0, user].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("mode,history", [("wait", True), ("fake_negative", True),
                                          ("fake_negative", False)])
def test_each_example_is_batched_once_and_learned_from_its_own_rows(mode: str,
                                                                    history: bool) -> None:
    # The rows batched to score impressions and store outcomes are those the
    # steps learn from: every training batch equals batching its examples
    # afresh (list and dense features included), and no event is batched twice.
    torch.set_num_threads(1)
    overrides = {**SETTINGS, "ingest.delayed_feedback": mode,
                 "trainer.max_batch_delay_s": "3600"}
    if not history:
        overrides["model.history_features"] = "[]"
        overrides["model.wide_terms"] = "[]"
    config = load_config(env={}, overrides=overrides)
    trainer = OnlineTrainer.from_config(config)
    assert trainer.observes_outcomes is history
    chunks: list[list[Event]] = []
    learned: list[Batch] = []
    train = trainer.train_batch

    def spy(batch: Batch, *args: object, **kwargs: object) -> object:
        learned.append(batch)
        return train(batch, *args, **kwargs)  # type: ignore[arg-type]

    class Recording(TrainingLoop):
        def _train(self, events: list[Event]) -> None:
            chunks.append(list(events))
            super()._train(events)

    trainer.train_batch = spy  # type: ignore[method-assign]
    events = list(SyntheticStream(STREAM).joined_events(3_000))
    loop = Recording(trainer, IteratorSource(events), config,
                     joiner=Joiner(["click"], window_s=10.0, delayed_feedback=mode))
    built = 0
    build = loop.batcher.build

    def counting(batched: list[Event]) -> Batch:
        nonlocal built
        built += len(batched)
        return build(batched)

    loop.batcher.build = counting  # type: ignore[method-assign]
    loop.run()
    assert len(learned) == len(chunks) >= 3
    fresh = Batcher(config.model.sparse_features, config.model.dense_features)
    for batch, chunk in zip(learned, chunks):
        expected = fresh.build(chunk)
        assert batch.sparse.keys() == expected.sparse.keys()
        assert torch.equal(batch.sparse.values(), expected.sparse.values())
        assert torch.equal(batch.sparse.lengths(), expected.sparse.lengths())
        for got, want in ((batch.dense, expected.dense), (batch.labels, expected.labels),
                          (batch.sample_rates, expected.sample_rates),
                          (batch.timestamps_ms, expected.timestamps_ms)):
            assert torch.equal(got, want)
    impressions = sum(e.type == "impression" for e in events)
    assert built == impressions + loop.stats.examples


def test_a_click_counts_one_showing_whether_or_not_its_negative_came_first() -> None:
    # ES-DFM's elapsed time (3 s): r1's click comes before r1 is learned as a
    # negative (one positive: a showing and a click), r2's after (its negative
    # counted the showing; the click adds a click). Both users end at (1, 1),
    # not at a share of the clicks learned twice.
    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "4096",
                                            "trainer.max_batch_delay_s": "3600"})
    trainer = OnlineTrainer.from_config(config)
    events = [Event("impression", 5, 7, 0, request_id="r1"),
              Event("impression", 6, 8, 0, request_id="r2"),
              Event("click", 5, 7, 1_000, request_id="r1"),
              Event("impression", 9, 9, 4_000, request_id="r3"),
              Event("click", 6, 8, 5_000, request_id="r2"),
              Event("impression", 9, 9, 9_000, request_id="r4")]
    joiner = Joiner(["click"], window_s=10.0, delayed_feedback="fake_negative", elapsed_s=3.0)
    TrainingLoop(trainer, IteratorSource(events), config, joiner=joiner).run()
    user = trainer.history.features.index("user_id")
    probe = Batcher(config.model.sparse_features, []).build(
        [Event(EXAMPLE, 5, 1, 10_000), Event(EXAMPLE, 6, 1, 10_000)])
    counts = trainer.history.counts(probe.sparse, None, 10_000)[:, user]
    assert counts.tolist() == [[1.0, 1.0], [1.0, 1.0]]

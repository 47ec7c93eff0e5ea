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

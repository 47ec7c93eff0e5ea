"""The trainer learns from a live stream, test-then-train.

The margin is tied to the stream itself rather than a lucky number: the
synthetic generator knows each example's true click probability, so the
Bayes-optimal AUC of the stream is measurable. After warm-up the trainer must
recover at least 40% of the AUC lift over chance that the optimum achieves
(simple per-id click counting recovers about 55% on this stream).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from streamrec.ingest.batch import Batcher
from streamrec.config import load_config
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.progressive import ProgressiveMetrics, exact_auc
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

EVENTS = 40_000
WARM_UP = 15_000


def trainer_and_batcher(settings: dict[str, str]) -> tuple[OnlineTrainer, Batcher]:
    """A trainer on the default config with ``settings``, and a batcher for its features."""
    config = load_config(env={}, overrides=settings)
    return OnlineTrainer.from_config(config), Batcher(config.model.sparse_features,
                                                      config.model.dense_features)


@pytest.mark.parametrize("hidden", ["", "64,32"], ids=["fm", "deepfm"])
def test_progressive_auc_after_warm_up_recovers_a_good_share_of_the_achievable_lift(
        hidden: str) -> None:
    torch.set_num_threads(1)
    config = load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price",
        "model.hidden": hidden,
        "trainer.batch_size": "256",
    })
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    stream = SyntheticStream(default())
    after = ProgressiveMetrics(window=EVENTS)
    truths: list[float] = []
    labels: list[float] = []
    seen = 0
    pairs = stream.events_with_truth(EVENTS)
    while chunk := list(itertools.islice(pairs, 256)):
        events = [e for e, _ in chunk]
        step = trainer.train_batch(batcher.build(events))
        if seen >= WARM_UP:
            batch_labels = torch.tensor([e.label for e in events])
            after.update(step.probs, batch_labels)
            truths.extend(p for _, p in chunk)
            labels.extend(batch_labels.tolist())
        seen += len(events)
    oracle = exact_auc(torch.tensor(truths), torch.tensor(labels))
    learned = after.auc
    assert oracle > 0.6, "the synthetic stream carries too little signal to test learning"
    assert learned >= 0.5 + 0.4 * (oracle - 0.5), (learned, oracle)
    # Calibration: progressive logloss beats always predicting the base rate.
    base = sum(labels) / len(labels)
    base_logloss = -(base * torch.log(torch.tensor(base))
                     + (1 - base) * torch.log(torch.tensor(1 - base)))
    assert after.logloss < float(base_logloss)


def test_a_cold_trainer_warms_up_with_small_batches() -> None:
    # Batches start at warmup_batch_size and grow with the examples learned
    # (a quarter of them) up to batch_size; 0 turns the warm-up off.
    config = load_config(env={}, overrides={"trainer.batch_size": "512",
                                            "trainer.warmup_batch_size": "32"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    events = iter(SyntheticStream(default()).events(3000))
    sizes = []
    while (size := trainer.batch_size_now()) and trainer.examples < 2500:
        sizes.append(size)
        trainer.train_batch(batcher.build([next(events) for _ in range(size)]))
    assert sizes[:2] == [32, 32]
    assert sizes == sorted(sizes) and sizes[-1] == 512
    assert all(s == max(32, min(512, seen // 4))
               for s, seen in zip(sizes, itertools.accumulate([0] + sizes)))
    off = load_config(env={}, overrides={"trainer.batch_size": "512",
                                         "trainer.warmup_batch_size": "0"})
    assert OnlineTrainer.from_config(off).batch_size_now() == 512


def test_a_slow_stream_is_trained_without_waiting_for_a_full_batch() -> None:
    # A live source that delivered 100 events and then goes quiet (not
    # exhausted, as a Kafka topic in a lull): the loop trains the partial
    # batch once its oldest event waited max_batch_delay_s.
    import threading
    import time

    from streamrec.ingest.source import MemorySource, SourceBatch
    from streamrec.trainer.loop import TrainingLoop

    class LiveSource(MemorySource):
        @property
        def exhausted(self) -> bool:
            return False

        def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
            got = super().poll(max_events, timeout_s)
            if not got.events:
                time.sleep(timeout_s)
            return got

    config = load_config(env={}, overrides={"trainer.batch_size": "512",
                                            "trainer.warmup_batch_size": "0",
                                            "trainer.max_batch_delay_s": "0.3",
                                            "ingest.poll_timeout_ms": "20"})
    trainer = OnlineTrainer.from_config(config)
    loop = TrainingLoop(trainer, LiveSource(SyntheticStream(default()).events(100)), config)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, kwargs={"stop": stop})
    started = time.monotonic()
    runner.start()
    try:
        while trainer.examples < 100 and time.monotonic() - started < 10:
            time.sleep(0.01)
        waited = time.monotonic() - started
        trained_while_running = trainer.examples
    finally:
        stop.set()
        runner.join(10)
    assert trained_while_running == 100, "the partial batch waited for the loop to stop"
    assert waited >= 0.3  # and not before the delay


def test_an_empty_batch_changes_nothing() -> None:
    # A caller draining a lull may hand over zero events: no step, no
    # optimizer move, and predicting zero events answers zero probabilities.
    trainer, batcher = trainer_and_batcher({"trainer.batch_size": "64"})
    trainer.train_batch(batcher.build(list(SyntheticStream(default()).events(64))))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    step = trainer.train_batch(batcher.build([]))
    assert step.size == 0 and step.probs.shape == (0,)
    assert (trainer.steps, trainer.examples) == (1, 64)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.predict(batcher.build([])).shape == (0,)


def test_predictions_stay_calibrated_under_negative_down_sampling() -> None:
    # True stream: every impression is clicked with probability 5%. The
    # joiner keeps a tenth of the negatives (positives all), so a third of
    # the training examples are positives; the trainer must still predict
    # the true stream's 5%, not the sampled stream's ~34%.
    import random

    from streamrec.ingest.event import EXAMPLE, Event
    from streamrec.ingest.joiner import Joiner

    torch.set_num_threads(1)
    rng = random.Random(0)
    config = load_config(env={}, overrides={
        "model.embedding_dim": "2", "model.hidden": "4", "model.history_features": "",
        "trainer.warmup_batch_size": "0", "trainer.batch_size": "512"})
    trainer = OnlineTrainer.from_config(config)
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    joiner = Joiner(["click"], window_s=1, rate=0.1, seed=1)
    examples: list[Event] = []
    for k in range(250_000):
        user, item = rng.randrange(20), rng.randrange(20)
        raw = [Event("impression", user, item, k, request_id=f"r{k}")]
        if rng.random() < 0.05:
            raw.append(Event("click", user, item, k, request_id=f"r{k}"))
        examples += joiner.push(raw)
    examples += joiner.flush()
    sampled_ctr = sum(e.label or 0.0 for e in examples) / len(examples)
    assert sampled_ctr > 0.25
    for start in range(0, len(examples), 512):
        trainer.train_batch(batcher.build(examples[start:start + 512]))
    probe = batcher.build([Event(EXAMPLE, u, i, 250_000, label=0.0)
                           for u in range(20) for i in range(20)])
    assert abs(float(trainer.predict(probe).mean()) - 0.05) < 0.01
    assert abs(float(trainer.model.prior_ctr) - 0.05) < 0.01


def test_history_counts_start_at_zero_whatever_the_embedding_init() -> None:
    # History tables share their feature's table config; its init_std is
    # for embeddings. Counts must start at exactly zero (a negative count
    # made log1p(n) NaN and poisoned the whole model).
    trainer, batcher = trainer_and_batcher({
        "model.history_features": "user_id", "table_defaults.init_std": "0.5",
        "trainer.warmup_batch_size": "0", "trainer.batch_size": "64"})
    events = list(SyntheticStream(default()).events(640))
    for start in range(0, 640, 64):
        step = trainer.train_batch(batcher.build(events[start:start + 64]))
        assert torch.isfinite(step.probs).all() and step.loss == step.loss
    users: dict[int, list[float]] = {}
    for e in events:
        users.setdefault(e.user_id, [0.0, 0.0])
        users[e.user_id][0] += 1
        users[e.user_id][1] += e.label or 0.0
    exported = trainer.tables["user_id#history"].export_all()
    ids, rows = exported.upserted.ids, exported.upserted.values
    stored = dict(zip(ids.tolist(), rows.tolist()))
    assert stored and all(stored[u] == pytest.approx(users[u]) for u in stored)


def test_one_event_from_a_skewed_clock_does_not_expire_every_row() -> None:
    trainer, batcher = trainer_and_batcher({
        "table_defaults.ttl_s": "3600", "trainer.warmup_batch_size": "0",
        "trainer.batch_size": "64"})
    events = list(SyntheticStream(default()).events(256))
    for start in range(0, 192, 64):
        trainer.train_batch(batcher.build(events[start:start + 64]))
    held = trainer.table_rows()["user_id"]
    clock = trainer.event_time_ms
    last = events[192:]
    last[0] = last[0]._replace(timestamp_ms=last[0].timestamp_ms + 10 * 3600_000)
    trainer.train_batch(batcher.build(last))
    for _ in range(20):  # let the expiry sweep visit every row
        trainer.embeddings.expire(trainer.event_time_ms)
    assert trainer.event_time_ms - clock < 3600_000
    assert trainer.table_rows()["user_id"] >= held


@pytest.mark.parametrize("shards", ["1", "2"])
def test_a_trainer_without_replicas_keeps_no_tombstones(shards: str) -> None:
    # Tombstones only serve parameter sync; without a replica they grew with
    # every eviction, in memory and in every checkpoint.
    config = load_config(env={}, overrides={
        "table_defaults.ttl_s": "1", "table_defaults.shards": shards,
        "trainer.warmup_batch_size": "0", "trainer.batch_size": "128"})
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    events = list(SyntheticStream(default()).events(2048))
    held, evicted = {}, {}
    for record in (True, False):
        trainer = OnlineTrainer.from_config(config)
        trainer.keep_evicted_ids(record)
        for start in range(0, 2048, 128):
            trainer.train_batch(batcher.build(events[start:start + 128]))
        evicted[record] = trainer.tables["user_id"].stats.evicted
        delta = TrainerParameters(trainer).collect_delta(1)
        held[record] = sum(len(t.evicted) for t in delta.tables)
    assert evicted[True] == evicted[False] > 0  # rows expire either way
    assert held[True] >= evicted[True] and held[False] == 0


def test_under_steady_load_batches_are_full_and_none_waits_past_the_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1500 examples arrive every 0.25 s (on a fake clock): a batch of 2048
    # fills every ~0.34 s, far within max_batch_delay_s = 1 s, so every batch
    # is full. (The leftover of a cut used to inherit the age of the batch's
    # oldest example and go out as a partial batch.) Then the stream slows to
    # 100 examples per 0.25 s: a partial batch goes once its oldest example
    # waited 1 s, not before, not much after.
    import types

    import streamrec.trainer.loop as loop_module
    from streamrec.ingest.source import SourceBatch
    from streamrec.trainer.loop import TrainingLoop

    clock = [0.0]
    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    arrived: list[float] = []

    class Source:
        exhausted = False
        polls = 0

        def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
            clock[0] += 0.25
            self.polls += 1
            n = 1500 if self.polls <= 40 else 100
            arrived.extend([clock[0]] * n)
            events = list(SyntheticStream(default()).events(n))
            return SourceBatch(events=events, offsets={("t", 0): len(arrived)})

        def commit(self, offsets: object) -> None: ...

        def seek(self, offsets: object) -> None: ...

    config = load_config(env={}, overrides={
        "trainer.batch_size": "2048", "trainer.warmup_batch_size": "0",
        "trainer.max_batch_delay_s": "1.0", "trainer.log_interval_s": "1000000"})
    batches: list[tuple[int, float]] = []  # (size, wait of its oldest example)

    class Loop(TrainingLoop):
        def _train(self, events: list) -> None:  # type: ignore[type-arg]
            start = sum(size for size, _ in batches)
            batches.append((len(events), clock[0] - arrived[start]))

    Loop(OnlineTrainer.from_config(config), Source(), config).run(  # type: ignore[arg-type]
        max_events=1500 * 40 + 100 * 20)
    steady = [size for size, _ in batches if size > 0][:29]
    assert steady == [2048] * 29
    slow = [(size, wait) for size, wait in batches[29:-1]]
    assert slow and all(1.0 <= wait <= 1.25 for _, wait in slow)


def test_any_valid_seed_trains() -> None:
    # Rows start from a hash of (seed, id): a 64-bit seed overflowed it.
    trainer, batcher = trainer_and_batcher({"trainer.seed": str(2**62 + 12345),
                                            "trainer.batch_size": "64"})
    step = trainer.train_batch(batcher.build(list(SyntheticStream(default()).events(64))))
    assert step.size == 64 and torch.isfinite(step.probs).all()


def test_clear_history_forgets_counts_and_keeps_embeddings() -> None:
    trainer, batcher = trainer_and_batcher({"trainer.batch_size": "64",
                                            "table_defaults.shards": "2"})
    events = list(SyntheticStream(default()).events(256))
    for start in range(0, 256, 64):
        trainer.train_batch(batcher.build(events[start:start + 64]))
    rows = trainer.table_rows()
    assert rows["user_id#history"] > 0
    trainer.clear_history()
    after = trainer.table_rows()
    assert after["user_id#history"] == after["item_id#history"] == 0
    assert after["user_id"] == rows["user_id"]
    # A second pass starts its counts from zero: an example sees only the
    # outcomes of this pass's earlier examples, never its own label.
    trainer.train_batch(batcher.build(events[:64]))
    exported = trainer.tables["user_id#history"].export_all()
    ids, counts = exported.upserted.ids, exported.upserted.values
    first = {}
    for e in events[:64]:
        first[e.user_id] = first.get(e.user_id, 0) + 1
    assert {i: int(c[0]) for i, c in zip(ids.tolist(), counts)} == first


def test_a_batch_whose_loss_is_not_finite_is_skipped_and_changes_nothing() -> None:
    # One NaN step would poison every dense weight through Adam's state for
    # good (and serving at the next sync); the trainer skips it, counts it,
    # and learns from the next batch as usual.
    from prometheus_client import CollectorRegistry

    from streamrec.trainer.metrics import TrainerMetrics

    from streamrec.trainer.quality import QualityMetrics

    trainer, batcher = trainer_and_batcher({"trainer.batch_size": "64"})
    registry = CollectorRegistry()
    TrainerMetrics(trainer, QualityMetrics(), registry)
    events = list(SyntheticStream(default()).events(192))
    trainer.train_batch(batcher.build(events[:64]))
    dense = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rows = {n: t.export_all() for n, t in trainer.tables.items()}
    forward = trainer.model.forward
    trainer.model.forward = lambda *a, **k: forward(*a, **k) * math.nan  # type: ignore[method-assign]
    step = trainer.train_batch(batcher.build(events[64:128]))
    trainer.model.forward = forward  # type: ignore[method-assign]
    assert step.loss != step.loss and trainer.skipped_steps == 1
    assert (trainer.steps, trainer.examples) == (1, 64)
    assert all(torch.equal(dense[k], v) for k, v in trainer.model.state_dict().items())
    for name, table in trainer.tables.items():
        exported = table.export_all()
        ids, values = exported.upserted.ids, exported.upserted.values
        before_ids, before_values = rows[name].upserted.ids, rows[name].upserted.values
        known = dict(zip(before_ids.tolist(), before_values))
        assert all(torch.equal(known[i], v) for i, v in zip(ids.tolist(), values)
                   if i in known), name
    assert registry.get_sample_value("streamrec_trainer_skipped_steps_total") == 1
    trainer.train_batch(batcher.build(events[128:]))
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    assert trainer.steps == 2


def test_the_loop_does_not_count_a_skipped_batch_as_learned() -> None:
    # The "not learning" alert reads the examples counter: a trainer whose
    # every batch is skipped must not look healthy.
    from prometheus_client import CollectorRegistry

    from streamrec.ingest.source import MemorySource
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.metrics import TrainerMetrics

    config = load_config(env={}, overrides={"trainer.batch_size": "64"})
    trainer = OnlineTrainer.from_config(config)
    registry = CollectorRegistry()
    loop = TrainingLoop(trainer, MemorySource(list(SyntheticStream(default()).events(192))),
                        config)
    loop.metrics = TrainerMetrics(trainer, loop.quality, registry)
    forward = trainer.model.forward
    calls = iter(range(3))
    trainer.model.forward = lambda *a, **k: forward(*a, **k) * (  # type: ignore[method-assign]
        math.nan if next(calls) == 1 else 1.0)
    loop.run()
    get = registry.get_sample_value
    assert get("streamrec_trainer_skipped_steps_total") == 1
    assert get("streamrec_trainer_steps_total") == 2
    assert get("streamrec_trainer_examples_total") == 128


def test_progressive_logloss_is_the_true_streams_under_negative_down_sampling() -> None:
    # The joiner keeps 1 negative in 10 (sample_rate 0.1): the sampled stream
    # is ~50% clicks while the true one has 10%. The model is calibrated to the
    # true stream (importance weights), and so must be the dashboard's logloss:
    # scored against the sampled labels unweighted it read ~1.2 for a model
    # whose true-stream logloss is ~0.33.
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from streamrec.ingest.batch import Batch

    torch.manual_seed(0)
    from streamrec.trainer.quality import QualityMetrics

    trainer, _ = trainer_and_batcher({"model.history_features": ""})
    quality = QualityMetrics()
    n = 256
    for step in range(200):
        labels = (torch.rand(n) < 0.5).float()
        sparse = KeyedJaggedTensor(keys=["user_id", "item_id"],
                                   values=torch.ones(2 * n, dtype=torch.int64),
                                   lengths=torch.ones(2 * n, dtype=torch.int32), stride=n)
        batch = Batch(sparse, torch.zeros(n, 0), labels, torch.where(labels > 0, 1.0, 0.1),
                      torch.full((n,), 1000 + step, dtype=torch.int64))
        result = trainer.train_batch(batch)
        quality.record_step(result.probs, batch)
    p = float(result.probs.mean())
    assert 0.07 < p < 0.13  # calibrated to the true stream
    true_logloss = -(0.1 * math.log(p) + 0.9 * math.log(1 - p))
    assert quality.progress.window_logloss == pytest.approx(true_logloss, abs=0.03)

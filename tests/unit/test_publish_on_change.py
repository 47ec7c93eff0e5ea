"""A version is published only when the parameters changed: while the trainer
learns nothing, model_version stands still (and serving staleness, measured
against the event time learned, grows)."""

from __future__ import annotations

import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batcher
from streamrec.serving.replica import ModelReplica
from streamrec.synthetic import SyntheticStream, default
from tests.trained import small_trainer
from streamrec.trainer.sync.publisher import Publisher
from streamrec.trainer.sync.sink import MemoryDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters


def learn(trainer: OnlineTrainer, stream: SyntheticStream, n: int = 256) -> None:
    batcher = Batcher(trainer.features, trainer.dense_features)
    trainer.train_batch(batcher.build(list(stream.events(n))))


def same_scores(trainer: OnlineTrainer, replica: ModelReplica) -> bool:
    probe = list(SyntheticStream(default()).events(20))
    batcher = Batcher(trainer.features, trainer.dense_features)
    want = trainer.predict(batcher.build(probe))
    got = torch.tensor([replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0]
                        for e in probe])
    return bool(torch.allclose(got, want, atol=1e-6, rtol=1e-5))


def test_no_version_is_published_while_nothing_is_learned() -> None:
    trainer, stream = small_trainer(), SyntheticStream(default())
    replica, registry = ModelReplica(CollectorRegistry()), CollectorRegistry()
    publisher = Publisher(TrainerParameters(trainer),
                          {"r": MemoryDeltaSink(replica)}, interval_s=60,
                          registry=registry)
    assert publisher.publish_once() == 1  # the first state is always published
    learned_ms = replica.learned_event_time_ms()
    for _ in range(5):  # the trainer stalls: versions 2..6 were published before
        assert publisher.publish_once() == 1
    assert replica.version == 1 and registry.get_sample_value("streamrec_sync_version") == 1
    assert registry.get_sample_value("streamrec_sync_pushes_total",
                                     {"replica": "r", "kind": "delta", "result": "ok"}) == 0
    assert replica.learned_event_time_ms() == learned_ms > 0
    learn(trainer, stream)
    assert publisher.publish_once() == 2 and replica.version == 2
    assert replica.learned_event_time_ms() >= learned_ms
    assert same_scores(trainer, replica)


def test_replicas_behind_get_the_last_version_while_nothing_is_learned() -> None:
    trainer, stream = small_trainer(), SyntheticStream(default())
    in_step, late = ModelReplica(CollectorRegistry()), ModelReplica(CollectorRegistry())
    late_sink = MemoryDeltaSink(late)
    publisher = Publisher(TrainerParameters(trainer),
                          {"in_step": MemoryDeltaSink(in_step), "late": late_sink},
                          interval_s=60, registry=CollectorRegistry())
    publisher.publish_once()
    del publisher.sinks["late"]  # misses versions 2 and 3
    for _ in range(2):
        learn(trainer, stream)
        publisher.publish_once()
    publisher.sinks["late"] = late_sink
    empty = ModelReplica(CollectorRegistry())
    publisher.sinks["empty"] = MemoryDeltaSink(empty)
    assert publisher.publish_once() == 3  # nothing learned: no version 4
    assert in_step.version == late.version == empty.version == 3
    # The late one caught up from held deltas, which keep no dense weights:
    # the last published ones went along.
    for replica in (in_step, late, empty):
        assert same_scores(trainer, replica)


def test_a_replica_holding_another_run_at_the_same_version_gets_a_new_one() -> None:
    stream = SyntheticStream(default())
    before, restarted = small_trainer(), small_trainer(256)
    learn(before, stream)
    stale = ModelReplica(CollectorRegistry())
    stale.apply(TrainerParameters(before).snapshot(3))
    fresh = ModelReplica(CollectorRegistry())
    publisher = Publisher(TrainerParameters(restarted),
                          {"fresh": MemoryDeltaSink(fresh)}, interval_s=60,
                          registry=CollectorRegistry(), start_version=2)
    assert publisher.publish_once() == 3
    publisher.sinks["stale"] = MemoryDeltaSink(stale)  # the earlier run's "3"
    assert publisher.publish_once() == 4  # nothing learned, but "3" names two models
    assert stale.version == fresh.version == 4
    assert same_scores(restarted, stale) and same_scores(restarted, fresh)


def test_staleness_is_measured_from_the_event_time_learned_not_the_export() -> None:
    # Exported a moment ago, but its newest learned events are an hour old:
    # the old export-time staleness read ~0 s and could not show a stall.
    import dataclasses
    import time

    trainer, registry = small_trainer(), CollectorRegistry()
    replica = ModelReplica(registry)
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    snapshot = TrainerParameters(trainer).snapshot(1)
    replica.apply(dataclasses.replace(snapshot, event_time_ms=hour_ago_ms,
                                      exported_at_ms=int(time.time() * 1000)))
    assert 3600 <= replica.staleness_seconds() < 3700
    assert registry.get_sample_value("streamrec_serving_learned_event_time_seconds") \
        == hour_ago_ms / 1000
    assert 3600 <= registry.get_sample_value("streamrec_serving_staleness_seconds") < 3700


def test_resending_the_last_version_does_not_hold_the_trainer_back() -> None:
    # The push of an unchanged snapshot to a slow replica ran while holding
    # the trainer's lock: no step could run meanwhile.
    import threading
    import time

    class SlowSink(MemoryDeltaSink):
        def push(self, delta):  # type: ignore[no-untyped-def]
            time.sleep(1.0)
            return super().push(delta)

    trainer = small_trainer()
    publisher = Publisher(TrainerParameters(trainer),
                          {"r": MemoryDeltaSink(ModelReplica(CollectorRegistry()))},
                          interval_s=60, registry=CollectorRegistry())
    publisher.publish_once()
    slow = ModelReplica(CollectorRegistry())
    publisher.sinks["slow"] = SlowSink(slow)  # joins while nothing is learned
    rounds = threading.Thread(target=publisher.publish_once)
    rounds.start()
    time.sleep(0.3)  # the push is under way
    got = trainer.lock.acquire(timeout=0.5)
    if got:
        trainer.lock.release()
    rounds.join()
    assert got and slow.version == 1


def test_a_replica_moved_above_between_probe_and_push_is_resynced_above() -> None:
    # Another trainer pushed version 9 after this one's probe: the refused
    # (stale) push counts as out of step, and the next round goes above 9.
    trainer, other = small_trainer(), small_trainer(256)
    replica, registry = ModelReplica(CollectorRegistry()), CollectorRegistry()

    class RacedSink(MemoryDeltaSink):
        raced = False

        def version(self) -> int:
            reported = super().version()
            if not self.raced:
                self.raced = True
                self.replica.apply(TrainerParameters(other).snapshot(9))
            return reported

    publisher = Publisher(TrainerParameters(trainer),
                          {"r": RacedSink(replica)}, interval_s=60, registry=registry)
    publisher.publish_once()
    assert replica.version == 9
    assert registry.get_sample_value("streamrec_sync_pushes_total",
                                     {"replica": "r", "kind": "full", "result": "gap"}) == 1
    assert publisher.publish_once() == 10 and replica.version == 10
    assert same_scores(trainer, replica)

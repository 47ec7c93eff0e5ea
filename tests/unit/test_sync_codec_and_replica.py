"""Parameter deltas on the wire, and a replica that scores exactly like the trainer."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.serving.replica import ModelReplica
from streamrec.config import AppConfig, load_config
from streamrec.errors import NotReadyError, SyncError, VersionGapError
from streamrec.synthetic import SyntheticStream, default
from streamrec.model.delta import DenseParameters, EvictedIds, ParameterDelta, TableDelta, \
    UpsertedRows, decode_chunks, encode_chunks, merge_deltas
from streamrec.trainer.sync.publisher import Publisher
from streamrec.trainer.sync.sink import MemoryDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

CHUNK = 65536


@st.composite
def deltas(draw: st.DrawFn) -> ParameterDelta:
    tables = []
    for name in draw(st.lists(st.sampled_from(["a", "b", "user_id#history"]), unique=True,
                              max_size=3)):
        dim = draw(st.integers(1, 40))
        n = draw(st.integers(0, 3000))
        ids = torch.tensor(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n,
                                         max_size=n)), dtype=torch.int64)
        evicted = torch.arange(draw(st.integers(0, 20000)), dtype=torch.int64) * 7 - 5
        tables.append(TableDelta(name, dim, UpsertedRows(ids, torch.randn(n, dim)),
                                 EvictedIds(evicted)))
    dense = DenseParameters({"w": torch.randn(draw(st.integers(0, 50)), 7), "b": torch.randn(())},
                            {"a": torch.randn(())})
    return ParameterDelta(version=draw(st.integers(1, 10**9)), base_version=3,
                          full=draw(st.booleans()), tables=tables, dense=dense,
                          event_time_ms=123, exported_at_ms=456, model_spec="{}")


@settings(max_examples=25, deadline=None)
@given(deltas())
def test_chunks_round_trip_and_respect_the_size_bound(delta: ParameterDelta) -> None:
    chunks = list(encode_chunks(delta, CHUNK))
    assert all(c.ByteSize() <= CHUNK for c in chunks)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    back = decode_chunks(chunks)
    assert (back.version, back.base_version, back.full, back.model_spec) == \
        (delta.version, delta.base_version, delta.full, delta.model_spec)
    assert back.dense.weights.keys() == delta.dense.weights.keys()
    for k in delta.dense.weights:
        assert torch.equal(back.dense.weights[k], delta.dense.weights[k])
    assert back.dense.equals(delta.dense)
    got = {t.table: t for t in back.tables}
    for t in delta.tables:
        if not t.is_empty():
            assert torch.equal(got[t.table].upserted.ids, t.upserted.ids)
            assert torch.equal(got[t.table].upserted.values, t.upserted.values)
            assert torch.equal(got[t.table].evicted.ids, t.evicted.ids)


def test_corrupt_or_incomplete_pushes_are_rejected() -> None:
    delta = ParameterDelta(2, 1, False, [TableDelta("a", 4, UpsertedRows(
        torch.arange(5000), torch.randn(5000, 4)))], DenseParameters(), 0, 0, "")
    chunks = list(encode_chunks(delta, CHUNK))
    assert len(chunks) > 1
    with pytest.raises(SyncError, match="before the chunk marked last"):
        decode_chunks(chunks[:-1])
    with pytest.raises(SyncError, match="chunk_index"):
        decode_chunks(chunks[1:])
    bad = type(chunks[0])()
    bad.CopyFrom(chunks[0])
    bad.tables[0].rows = bad.tables[0].rows[:-4]
    with pytest.raises(SyncError, match="row bytes"):
        decode_chunks([bad, *chunks[1:]])
    with pytest.raises(SyncError, match="no chunks"):
        decode_chunks([])


def config(**extra: str) -> AppConfig:
    return load_config(env={}, overrides={
        "model.sparse_features": "user_id,item_id,category,country,hour",
        "model.dense_features": "price", "trainer.batch_size": "128", **extra})


def train(trainer: OnlineTrainer, events: list[Event]) -> None:
    batcher = Batcher(trainer.features, trainer.dense_features)
    for start in range(0, len(events), 128):
        trainer.train_batch(batcher.build(events[start:start + 128]))


def assert_same_scores(trainer: OnlineTrainer, replica: ModelReplica, events: list[Event]) -> None:
    batcher = Batcher(trainer.features, trainer.dense_features)
    want = trainer.predict(batcher.build(events))
    got = [replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in events]
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("extra", [{}, {"model.history_features": "user_id,item_id"},
                                   {"table_defaults.ttl_s": "5", "table_defaults.min_count": "2"},
                                   {"table_defaults.prune_alpha": "0.001"},
                                   {"model.wide_terms": "user_id,user_id*item_id",
                                    "table_defaults.min_count": "2",
                                    "table_defaults.ttl_s": "5"}],
                         ids=["plain", "history", "filter+ttl", "pruning", "wide"])
def test_replica_scores_exactly_as_the_trainer_after_snapshot_and_deltas(
        extra: dict[str, str]) -> None:
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(config(**extra))
    replica = ModelReplica(registry=CollectorRegistry())
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(2000)))
    replica.apply(decode_chunks(encode_chunks(TrainerParameters(trainer).snapshot(1), CHUNK)))
    probe = list(stream.events(50))
    assert_same_scores(trainer, replica, probe)
    for version in range(2, 5):  # deltas only carry what changed
        train(trainer, list(stream.events(1500)))
        delta = TrainerParameters(trainer).collect_delta(version)
        replica.apply(decode_chunks(encode_chunks(delta, CHUNK)))
        assert replica.version == version
        assert_same_scores(trainer, replica, probe)
    assert replica.table_rows() == trainer.table_rows()


def test_wide_rows_reach_replicas_as_weights_and_whole_rows_are_taken_too() -> None:
    """A wide row is sent as its weight alone; a replica still takes it whole
    ([weight, Adagrad sum]) from a trainer of a release that sent both."""
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(config(**{"model.wide_terms": "user_id,user_id*item_id"}))
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(2000)))
    snapshot = TrainerParameters(trainer).snapshot(1)
    assert {t.table: t.dim for t in snapshot.tables if t.table.endswith("#wide")} == {
        "user_id#wide": 1, "user_id*item_id#wide": 1}
    whole = ParameterDelta(1, 0, True, [t.export_all() for t in trainer.tables.values()],
                           snapshot.dense, snapshot.event_time_ms, 0, snapshot.model_spec)
    assert {t.dim for t in whole.tables if t.table.endswith("#wide")} == {2}
    probe = list(stream.events(50))
    for delta in (snapshot, whole):
        replica = ModelReplica(registry=CollectorRegistry())
        replica.apply(decode_chunks(encode_chunks(delta, CHUNK)))
        assert_same_scores(trainer, replica, probe)


def test_tombstones_apply_before_rows_so_a_readmitted_id_stays() -> None:
    trainer = OnlineTrainer.from_config(config())
    train(trainer, list(SyntheticStream(default()).events(300)))
    replica = ModelReplica(registry=CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    item = next(iter(trainer.tables["item_id"].export_all().upserted.ids.tolist()))
    row = torch.full((1, trainer.model.row_dim), 0.5)
    readmitted = TableDelta("item_id", trainer.model.row_dim,
                            UpsertedRows(torch.tensor([item]), row), EvictedIds(torch.tensor([item])))
    replica.apply(ParameterDelta(2, 1, False, [readmitted], DenseParameters(), 0, 0, ""))
    gone = TableDelta("item_id", trainer.model.row_dim,
                      UpsertedRows.empty(trainer.model.row_dim), EvictedIds(torch.tensor([item])))
    assert replica.table_rows()["item_id"] == trainer.table_rows()["item_id"]
    replica.apply(ParameterDelta(3, 2, False, [gone], DenseParameters(), 0, 0, ""))
    assert replica.table_rows()["item_id"] == trainer.table_rows()["item_id"] - 1


def test_version_gaps_are_refused_and_a_full_snapshot_resets() -> None:
    trainer = OnlineTrainer.from_config(config())
    train(trainer, list(SyntheticStream(default()).events(300)))
    replica = ModelReplica(registry=CollectorRegistry())
    with pytest.raises(NotReadyError):
        replica.predict(1, [1, 2])
    with pytest.raises(VersionGapError):
        replica.apply(TrainerParameters(trainer).collect_delta(5))
    replica.apply(TrainerParameters(trainer).snapshot(5))
    with pytest.raises(VersionGapError):
        replica.apply(TrainerParameters(trainer).collect_delta(7))  # base 6 != 5
    assert replica.version == 5
    replica.apply(TrainerParameters(trainer).snapshot(9))
    assert replica.version == 9


def test_a_rejected_delta_leaves_the_served_version_untouched() -> None:
    # Each of these deltas fails a check; none may change what is served
    # (a request sees version v or v+1, never a mix of v and a rejected delta).
    trainer = OnlineTrainer.from_config(config())
    train(trainer, list(SyntheticStream(default()).events(600)))
    replica = ModelReplica(registry=CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    probe = list(SyntheticStream(default()).events(20))
    train(trainer, list(SyntheticStream(default()).events(600)))
    good = TrainerParameters(trainer).collect_delta(2)  # changes dense weights and rows alike
    extra_key = DenseParameters(dict(good.dense.weights, bogus=torch.zeros(1)))
    wrong_shape = DenseParameters({k: (v[:1] if v.dim() else v)
                                   for k, v in good.dense.weights.items()})
    unknown_table = [*good.tables, TableDelta("no_such_table", 3, UpsertedRows(
        torch.tensor([1]), torch.zeros(1, 3)))]
    # Rows that do not match their ids cannot even be recorded.
    touched = next(t for t in good.tables if len(t.upserted))
    with pytest.raises(ValueError, match="upserted rows"):
        UpsertedRows(touched.upserted.ids, touched.upserted.values[:-1])
    before = [replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in probe]
    for dense, tables in ((extra_key, good.tables), (wrong_shape, good.tables),
                          (good.dense, unknown_table)):
        with pytest.raises(SyncError):
            replica.apply(ParameterDelta(2, 1, False, tables, dense, 0, 0, ""))
        assert replica.version == 1
        after = [replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in probe]
        assert after == before
    replica.apply(good)  # and the intact delta still applies on top of version 1
    assert_same_scores(trainer, replica, probe)


def test_a_feature_without_any_synced_row_reads_as_zeros() -> None:
    # A fresh trainer's first snapshot: no event carried "category" yet, so
    # its table is empty; requests naming a category still score, as in training.
    trainer = OnlineTrainer.from_config(config())
    replica = ModelReplica(registry=CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    assert replica.table_rows()["category"] == 0
    assert_same_scores(trainer, replica, list(SyntheticStream(default()).events(5)))


class FlakySink(MemoryDeltaSink):
    def __init__(self, replica: ModelReplica) -> None:
        super().__init__(replica)
        self.fail = True

    def version(self) -> int:
        if self.fail:
            raise SyncError("replica unreachable")
        return super().version()

    def push(self, delta: ParameterDelta) -> int:
        if self.fail:
            raise SyncError("replica unreachable")
        return super().push(delta)


def test_publisher_keeps_healthy_replicas_in_step_and_recovers_a_failed_one() -> None:
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(config())
    stream = SyntheticStream(default())
    healthy, flaky = ModelReplica(CollectorRegistry()), ModelReplica(CollectorRegistry())
    flaky_sink = FlakySink(flaky)
    registry = CollectorRegistry()
    parameters = TrainerParameters(trainer)
    publisher = Publisher(parameters, {"healthy": MemoryDeltaSink(healthy), "flaky": flaky_sink},
                          interval_s=60, registry=registry)
    probe = list(stream.events(30))
    snapshots = []
    take_snapshot = parameters.snapshot
    parameters.snapshot = lambda version: snapshots.append(version) or take_snapshot(version)
    for _ in range(3):
        train(trainer, list(itertools.islice(stream.events(600), 600)))
        publisher.publish_once()
    assert healthy.version == 3 and not flaky.ready
    # Only the healthy replica's first version needed one: no full snapshot
    # is built (under the trainer's lock) for a replica that does not answer.
    assert snapshots == [1]
    assert_same_scores(trainer, healthy, probe)
    assert registry.get_sample_value("streamrec_sync_pushes_total",
                                     {"replica": "flaky", "kind": "full", "result": "error"}) == 3
    flaky_sink.fail = False
    train(trainer, list(stream.events(600)))
    publisher.publish_once()  # the recovered replica gets a full snapshot
    train(trainer, list(stream.events(600)))
    publisher.publish_once()  # and deltas from then on
    assert healthy.version == flaky.version == 5
    assert_same_scores(trainer, flaky, probe)
    assert registry.get_sample_value("streamrec_sync_pushes_total",
                                     {"replica": "flaky", "kind": "delta", "result": "ok"}) == 1
    # A replica that restarts empty is resynced, at the version last
    # published: nothing was learned since.
    restarted = ModelReplica(CollectorRegistry())
    publisher.sinks["healthy"] = MemoryDeltaSink(restarted)
    publisher.publish_once()
    assert restarted.version == 5
    assert_same_scores(trainer, restarted, probe)


def test_serving_copies_only_the_features_the_model_reads_into_each_candidates_row(
        monkeypatch) -> None:
    # Thousands of other names (empty or not) in a request were copied into
    # every candidate's row: a small request could take gigabytes.
    trainer = OnlineTrainer.from_config(config())
    train(trainer, list(SyntheticStream(default()).events(256)))
    replica = ModelReplica(CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    rows_scored: list = []
    build_rows = Batcher.build_rows
    monkeypatch.setattr(Batcher, "build_rows",
                        lambda self, rows: rows_scored.extend(rows) or build_rows(self, rows))
    items = list(range(40))
    own = [{"country": ("fr",), "unused": ("a",)}] * len(items)
    extra = {f"unused{i}": () for i in range(2000)}
    got, _ = replica.predict(7, items, {**extra, "category": ("c1",)}, own)
    assert len(rows_scored) == 40
    assert all(set(f) == {"category", "country"} for _, _, f in rows_scored)
    want, _ = replica.predict(7, items, {"category": ("c1",)}, [{"country": ("fr",)}] * 40)
    assert got == want


def test_an_empty_replica_counts_a_delta_as_a_gap_not_an_error() -> None:
    # Every replica restart ends this way before its resync: not an error.
    trainer = OnlineTrainer.from_config(config())
    registry = CollectorRegistry()
    replica = ModelReplica(registry)
    TrainerParameters(trainer).snapshot(1)
    with pytest.raises(VersionGapError):
        replica.apply(TrainerParameters(trainer).collect_delta(2))
    get = registry.get_sample_value
    assert get("streamrec_serving_deltas_applied_total", {"kind": "delta", "result": "gap"}) == 1
    assert get("streamrec_serving_deltas_applied_total",
               {"kind": "delta", "result": "error"}) in (None, 0)


def test_ids_admitted_in_a_skipped_step_reach_the_replica() -> None:
    # A batch whose loss is not finite learns nothing, but its new ids got rows
    # (their initial values, which the trainer scores with): no update marked
    # them changed, so no delta carried them and serving read zeros.
    import math

    from streamrec.ingest.batch import Batch

    trainer = OnlineTrainer.from_config(config())
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(256)))
    replica = ModelReplica(CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    newcomers = [e._replace(user_id=10**12 + i, item_id=10**12 + i)
                 for i, e in enumerate(stream.events(64))]
    batcher = Batcher(trainer.features, trainer.dense_features)
    batch = batcher.build(newcomers)
    poisoned = Batch(batch.sparse, torch.full_like(batch.dense, math.nan), batch.labels,
                     batch.sample_rates, batch.timestamps_ms)
    assert trainer.train_batch(poisoned).skipped
    replica.apply(TrainerParameters(trainer).collect_delta(2))
    assert_same_scores(trainer, replica, newcomers)


class HungSink(MemoryDeltaSink):
    """A replica that accepts calls and never answers (until released)."""

    def __init__(self, replica: ModelReplica) -> None:
        super().__init__(replica)
        self.release = threading.Event()

    def version(self) -> int:
        self.release.wait(30)
        raise SyncError("deadline exceeded")


def test_a_hung_replica_holds_the_others_back_by_at_most_one_interval() -> None:
    trainer = OnlineTrainer.from_config(config())
    healthy = ModelReplica(CollectorRegistry())
    hung = HungSink(ModelReplica(CollectorRegistry()))
    publisher = Publisher(TrainerParameters(trainer),
                          {"hung": hung, "healthy": MemoryDeltaSink(healthy)},
                          interval_s=0.2, registry=CollectorRegistry())
    stream = SyntheticStream(default())
    started = time.monotonic()
    for _ in range(5):
        train(trainer, list(stream.events(256)))
        publisher.publish_once()
    took = time.monotonic() - started
    hung.release.set()
    assert healthy.version == 5
    assert_same_scores(trainer, healthy, list(stream.events(20)))
    # One interval of waiting in the first round; after it the hung replica
    # is busy and sits the rounds out. (Sequential pushes waited its whole
    # deadline every round.)
    assert took < 5 * 0.2 + 4, took


class LateSink(MemoryDeltaSink):
    """Applies a push, then reports it failed (the client's deadline passed first)."""

    def __init__(self, replica: ModelReplica) -> None:
        super().__init__(replica)
        self.late = True

    def push(self, delta: ParameterDelta) -> int:
        version = super().push(delta)
        if self.late:
            self.late = False
            raise SyncError("DEADLINE_EXCEEDED")
        return version


def test_a_snapshot_applied_after_its_deadline_is_followed_by_deltas() -> None:
    # The replica holds the snapshot: rebuilding one every interval (under the
    # trainer's lock) and resending it forever was the old behaviour.
    trainer = OnlineTrainer.from_config(config())
    replica = ModelReplica(CollectorRegistry())
    registry = CollectorRegistry()
    publisher = Publisher(TrainerParameters(trainer),
                          {"r": LateSink(replica)}, interval_s=60, registry=registry)
    stream = SyntheticStream(default())
    for _ in range(3):
        train(trainer, list(stream.events(256)))
        publisher.publish_once()
    get = registry.get_sample_value
    assert get("streamrec_sync_pushes_total", {"replica": "r", "kind": "full",
                                               "result": "error"}) == 1
    assert get("streamrec_sync_pushes_total", {"replica": "r", "kind": "full",
                                               "result": "ok"}) == 0
    assert get("streamrec_sync_pushes_total", {"replica": "r", "kind": "delta",
                                               "result": "ok"}) == 2
    assert replica.version == 3
    assert_same_scores(trainer, replica, list(stream.events(20)))


def test_replicas_at_one_version_serve_one_model_while_training_goes_on() -> None:
    # A step that lands between reading the delta and reading the snapshot
    # made a joining replica's version 2 differ from an in-step one's.
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(config())
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(256)))
    in_step = ModelReplica(CollectorRegistry())
    sinks = {"in_step": MemoryDeltaSink(in_step)}
    parameters = TrainerParameters(trainer)
    publisher = Publisher(parameters, sinks, interval_s=60, registry=CollectorRegistry())
    publisher.publish_once()
    batch = Batcher(trainer.features, trainer.dense_features).build(list(stream.events(256)))
    collect = parameters.collect_delta

    def collect_then_a_step_elsewhere(version: int) -> ParameterDelta:
        delta = collect(version)
        step = threading.Thread(target=trainer.train_batch, args=(batch,))
        step.start()
        step.join(0.5)  # runs now, unless the publisher holds the trainer's lock
        return delta

    parameters.collect_delta = collect_then_a_step_elsewhere  # type: ignore[method-assign]
    joining = ModelReplica(CollectorRegistry())
    publisher.sinks["joining"] = MemoryDeltaSink(joining)
    train(trainer, list(stream.events(256)))  # something to publish as version 2
    publisher.publish_once()
    assert in_step.version == joining.version == 2
    probe = list(stream.events(30))
    scores = [[r.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in probe]
              for r in (in_step, joining)]
    assert scores[0] == scores[1]


class SlowSink(MemoryDeltaSink):
    """A replica whose full snapshots take longer than the sync interval to apply."""

    def __init__(self, replica: ModelReplica, seconds: float) -> None:
        super().__init__(replica)
        self.seconds = seconds
        self.kinds: list[str] = []

    def push(self, delta: ParameterDelta) -> int:
        self.kinds.append("full" if delta.full else "delta")
        if delta.full:
            time.sleep(self.seconds)
        return super().push(delta)


def test_a_replica_slower_than_the_interval_catches_up_with_the_deltas_it_missed() -> None:
    # Its snapshot lands rounds later; sending it another snapshot each time
    # (rebuilt under the trainer's lock) would never end.
    trainer = OnlineTrainer.from_config(config())
    replica = ModelReplica(CollectorRegistry())
    slow = SlowSink(replica, seconds=0.35)
    publisher = Publisher(TrainerParameters(trainer),
                          {"slow": slow}, interval_s=0.1, registry=CollectorRegistry())
    stream = SyntheticStream(default())
    for _ in range(12):
        train(trainer, list(stream.events(128)))
        publisher.publish_once()
        time.sleep(0.1)
    publisher.start()
    publisher.stop()  # waits for any push in flight, then the last round
    # One snapshot; the rounds it missed arrive merged into one delta, then deltas.
    assert slow.kinds.count("full") == 1 and slow.kinds.count("delta") >= 4
    # What is held for that costs rows, not a copy of the dense weights per version.
    assert all(d.dense.is_empty() for d in publisher._deltas.values())
    assert replica.version == publisher.version
    assert_same_scores(trainer, replica, list(stream.events(20)))


def test_stop_delivers_the_last_version_to_a_replica_busy_at_that_moment() -> None:
    trainer = OnlineTrainer.from_config(config())
    replica = ModelReplica(CollectorRegistry())
    publisher = Publisher(TrainerParameters(trainer),
                          {"slow": SlowSink(replica, seconds=0.3)}, interval_s=0.1,
                          registry=CollectorRegistry())
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(256)))
    publisher.start()
    time.sleep(0.15)  # the first round's snapshot is being applied
    train(trainer, list(stream.events(256)))
    publisher.stop()
    assert replica.version == publisher.version
    assert_same_scores(trainer, replica, list(stream.events(20)))


def test_a_replica_added_later_is_served_and_a_hung_one_does_not_starve_it() -> None:
    trainer = OnlineTrainer.from_config(config())
    hung = HungSink(ModelReplica(CollectorRegistry()))
    publisher = Publisher(TrainerParameters(trainer),
                          {"hung": hung}, interval_s=0.2, registry=CollectorRegistry())
    publisher.publish_once()
    added = ModelReplica(CollectorRegistry())
    publisher.sinks["added"] = MemoryDeltaSink(added)
    stream = SyntheticStream(default())
    for _ in range(3):
        train(trainer, list(stream.events(256)))
        publisher.publish_once()
    hung.release.set()
    assert added.version == publisher.version
    assert_same_scores(trainer, added, list(stream.events(20)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 12), max_size=8),
                          st.lists(st.integers(0, 12), max_size=8)), min_size=1, max_size=6))
def test_merged_deltas_equal_the_deltas_applied_in_order(
        steps: list[tuple[list[int], list[int]]]) -> None:
    # A replica that fell behind gets the missed deltas as one (atomic) delta.
    deltas, value = [], 0.0
    for k, (touched, evicted) in enumerate(steps):
        touched = list(dict.fromkeys(touched))
        rows = torch.arange(value, value + len(touched)).reshape(-1, 1)
        value += len(touched)
        deltas.append(ParameterDelta(
            version=k + 2, base_version=k + 1, full=False,
            dense=DenseParameters({"w": torch.tensor([k])}),
            tables=[TableDelta("t", 1, UpsertedRows(torch.tensor(touched, dtype=torch.int64), rows),
                               EvictedIds(torch.tensor(evicted, dtype=torch.int64)))]))

    def apply(state: dict[int, float], delta: ParameterDelta) -> None:
        for t in delta.tables:  # as the replica does: evicted ids, then rows
            for i in t.evicted.ids.tolist():
                state.pop(i, None)
            state.update(zip(t.upserted.ids.tolist(), t.upserted.values.reshape(-1).tolist()))

    start = {i: -1.0 for i in range(0, 13, 3)}
    one_by_one, merged = dict(start), dict(start)
    for delta in deltas:
        apply(one_by_one, delta)
    together = merge_deltas(deltas)
    apply(merged, together)
    assert merged == one_by_one
    assert (together.base_version, together.version) == (1, len(deltas) + 1)
    assert torch.equal(together.dense.weights["w"], deltas[-1].dense.weights["w"])


def restart_beside_a_stale_replica() -> tuple[SyntheticStream, OnlineTrainer, Publisher,
                                                ModelReplica, ModelReplica, FlakySink]:
    """A trainer restarted from a checkpoint at version 2, publishing to a fresh
    replica and to one (unreachable for now) holding the earlier run's version 5."""
    stream = SyntheticStream(default())
    before = OnlineTrainer.from_config(config())
    train(before, list(stream.events(256)))
    stale = ModelReplica(CollectorRegistry())
    stale.apply(TrainerParameters(before).snapshot(5))
    restarted = OnlineTrainer.from_config(config())
    fresh = ModelReplica(CollectorRegistry())
    flaky = FlakySink(stale)
    publisher = Publisher(TrainerParameters(restarted),
                          {"fresh": MemoryDeltaSink(fresh), "stale": flaky},
                          interval_s=60, registry=CollectorRegistry(), start_version=2)
    return stream, restarted, publisher, fresh, stale, flaky


def test_a_replica_holding_an_earlier_runs_version_gets_a_snapshot() -> None:
    # Unreachable while the restarted trainer published versions up to the
    # one it holds from the previous run: equal numbers, other states.
    stream, restarted, publisher, fresh, stale, flaky = restart_beside_a_stale_replica()
    for _ in range(3):  # versions 3, 4, 5
        train(restarted, list(stream.events(256)))
        publisher.publish_once()
    flaky.fail = False
    train(restarted, list(stream.events(256)))
    publisher.publish_once()
    probe = list(stream.events(20))
    assert stale.version == fresh.version == 6
    assert_same_scores(restarted, stale, probe)
    assert_same_scores(restarted, fresh, probe)


def test_a_failed_snapshot_leaves_an_earlier_runs_replica_off_the_lineage() -> None:
    # Its snapshot push failed (not applied): it still holds the earlier run's
    # state at a version number this run has also published.
    stream, restarted, publisher, fresh, stale, flaky = restart_beside_a_stale_replica()
    for _ in range(4):  # versions 3-6, the stale replica unreachable
        train(restarted, list(stream.events(256)))
        publisher.publish_once()
    flaky.push = lambda delta: (_ for _ in ()).throw(SyncError("DEADLINE_EXCEEDED"))  # type: ignore[method-assign]
    flaky.fail = False  # answers GetVersion (5), but its snapshot push fails
    train(restarted, list(stream.events(256)))
    publisher.publish_once()
    assert stale.version == 5
    del flaky.push  # pushes work again
    train(restarted, list(stream.events(256)))
    publisher.publish_once()
    assert stale.version == fresh.version == 8
    assert_same_scores(restarted, stale, list(stream.events(20)))


def test_versions_never_go_back_after_a_restart_from_an_older_checkpoint() -> None:
    # The replica served up to version 5 of the previous run; the checkpoint
    # holds version 1. Publishing "2" again would name a different model.
    stream = SyntheticStream(default())
    replica = ModelReplica(CollectorRegistry())
    before = OnlineTrainer.from_config(config())
    train(before, list(stream.events(256)))
    replica.apply(TrainerParameters(before).snapshot(5))
    restarted = OnlineTrainer.from_config(config())
    train(restarted, list(stream.events(256)))
    publisher = Publisher(TrainerParameters(restarted),
                          {"r": MemoryDeltaSink(replica)}, interval_s=60,
                          registry=CollectorRegistry(), start_version=1)
    assert publisher.publish_once() == 6 and replica.version == 6
    train(restarted, list(stream.events(256)))
    assert publisher.publish_once() == 7 and replica.version == 7
    assert_same_scores(restarted, replica, list(stream.events(20)))


@pytest.mark.parametrize("shape, data", [
    ([1 << 32, 1 << 32], b""),  # 2**64 elements: wraps to 0 in int64
    ([1 << 31, 1 << 31, 4], b""),  # 2**64 again, spread over three dimensions
    ([0, 1 << 62], b""),  # no elements, but over numpy's largest array
    ([1] * 70, b"\0" * 4),  # over numpy's 64 dimensions
], ids=["int64-overflow", "overflow-3d", "empty-huge", "too-many-dims"])
def test_dense_shapes_numpy_cannot_build_are_sync_errors(shape: list[int], data: bytes) -> None:
    # A ValueError here escaped the sync servicer as gRPC UNKNOWN.
    from streamrec.protos import sync_pb2  # imported here: this file's header is edited elsewhere

    chunk = sync_pb2.ParameterChunk(version=1, full=True, last=True, model_spec="{}",
                                    dense=[sync_pb2.DenseTensor(name="w", shape=shape, data=data)])
    with pytest.raises(SyncError, match="dense 'w'"):
        decode_chunks([chunk])


def test_a_second_server_on_ports_in_use_fails_to_bind() -> None:
    # gRPC's default SO_REUSEPORT let a second replica share both ports silently.
    from streamrec.serving.server import create_server
    from streamrec.config import ServingConfig

    first = create_server(ServingConfig(port=0, sync_port=0),
                          ModelReplica(registry=CollectorRegistry()))
    first.start()
    try:
        with pytest.raises(OSError, match=f"cannot bind serving port 127.0.0.1:{first.port}"):
            create_server(ServingConfig(port=first.port, sync_port=0),
                          ModelReplica(registry=CollectorRegistry()))
        with pytest.raises(OSError, match=f"cannot bind sync port 127.0.0.1:{first.sync_port}"):
            create_server(ServingConfig(port=0, sync_port=first.sync_port),
                          ModelReplica(registry=CollectorRegistry()))
    finally:
        first.stop(0)


def test_candidate_features_replace_shared_ones_of_the_same_name() -> None:
    # A candidate's own feature replaces the request-level one of the same
    # name; the others are shared: scores equal the trainer's on the merge.
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(config())
    stream = SyntheticStream(default())
    train(trainer, list(stream.events(1000)))
    replica = ModelReplica(registry=CollectorRegistry())
    replica.apply(TrainerParameters(trainer).snapshot(1))
    shared = {"category": ("c1",), "country": ("fr",), "price": (3.0,)}
    own = [{"category": ("c2",)}, {}, {"price": (9.0,), "hour": (4,)}]
    got, _ = replica.predict(7, [1, 2, 3], shared, own)
    want, _ = replica.score_rows([(7, item, {**shared, **mine})
                                  for item, mine in zip([1, 2, 3], own)])
    assert got == want
    assert got[0] != replica.predict(7, [1], shared)[0][0]  # c2 really replaced c1


def test_a_step_is_pushed_at_once_and_pushes_are_at_most_every_min_interval() -> None:
    trainer = OnlineTrainer.from_config(config())
    replica = ModelReplica(CollectorRegistry())
    publisher = Publisher(TrainerParameters(trainer),
                          {"r": MemoryDeltaSink(replica)}, interval_s=60,
                          min_interval_s=0.3, registry=CollectorRegistry())
    stream = SyntheticStream(default())
    publisher.start()
    try:
        train(trainer, list(stream.events(256)))
        publisher.notify()  # what the training loop does after each step
        deadline = time.monotonic() + 30
        while replica.version == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Pushed on the step's notice, not after the 60 s interval.
        assert replica.version == 1
        assert_same_scores(trainer, replica, list(stream.events(20)))
        # Steps in quick succession: one round per min_interval_s, the last
        # step's parameters included.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            train(trainer, list(stream.events(128)))
            publisher.notify()
        deadline = time.monotonic() + 30
        while replica.version < publisher.version and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        assert 2 <= publisher.version <= 1 + 5, publisher.version
        assert_same_scores(trainer, replica, list(stream.events(20)))
    finally:
        publisher.stop()

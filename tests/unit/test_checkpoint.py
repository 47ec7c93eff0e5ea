"""Checkpointer: a failed write leaves no temporary file and raises CheckpointError;
temporary files of killed processes are cleaned up when the next trainer starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from streamrec.errors import CheckpointError
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.parameters import TrainerParameters


def test_a_write_that_fails_inside_torch_save_leaves_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpointer = Checkpointer(tmp_path)
    first = checkpointer.save(1, {"w": torch.ones(4)}, {("events", 0): 10}, version=1)

    def disk_full(obj: Any, f: Any) -> None:
        f.write(b"partial checkpoint")
        # What torch.save raises when the file cannot be written (ENOSPC, EFBIG).
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="ckpt-000000000002.pt") as info:
        checkpointer.save(2, {"w": torch.zeros(4)}, {("events", 0): 20}, version=2)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    monkeypatch.undo()
    latest = checkpointer.latest()
    assert latest is not None and latest.step == 1 and latest.offsets == {("events", 0): 10}


def test_temporary_files_of_a_killed_process_are_removed_at_start(tmp_path: Path) -> None:
    Checkpointer(tmp_path).save(7, {"w": torch.ones(2)}, {("events", 0): 3}, version=0)
    stale = [tmp_path / "ckpt-000000000008.pt.tmp4242", tmp_path / "ckpt-000000000009.pt.tmp1"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    others = ["notes.txt", "ckpt-000000000008.pt.tmpfile", "my-ckpt-000000000008.pt.tmp12"]
    for name in others:
        (tmp_path / name).write_text("not ours")
    checkpointer = Checkpointer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt-000000000007.pt", *others])
    latest = checkpointer.latest()
    assert latest is not None and latest.step == 7


# Table state keys of earlier releases (the checkpoints of 0.2 name them so).
EARLIER_KEYS = {"adagrad_state": "momentum", "evicted_ids": "tombstones"}


def earlier_release(state: dict[str, Any]) -> dict[str, Any]:
    """A trainer state as an earlier release wrote it: its tables' keys renamed back."""
    def key(k: str) -> str:
        prefix, _, last = k.rpartition(".")  # (sharded tables: "shard0.adagrad_state")
        return f"{prefix}.{EARLIER_KEYS[last]}" if prefix and last in EARLIER_KEYS \
            else EARLIER_KEYS.get(k, k)
    tables = {n: {key(k): v for k, v in t.items()} for n, t in state["tables"].items()}
    return {**state, "tables": tables}


@pytest.mark.parametrize("written_by", ["this release", "an earlier release"])
def test_a_restored_trainer_continues_exactly_like_the_one_that_saved(
        tmp_path: Path, written_by: str) -> None:
    # Everything a step depends on comes back: dense weights and Adam state,
    # table rows with their Adagrad state and last-seen times, the frequency
    # filter, history counts, wide terms, OptEmbed thresholds, counters and the clock. The
    # restored trainer then scores and learns exactly like the original,
    # from a checkpoint whose tables use the glossary's names (Adagrad state,
    # evicted ids) or the names an earlier release gave them.
    from streamrec.ingest.batch import Batcher
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.checkpoint_state import TrainingState
    from streamrec.trainer.quality import QualityMetrics
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={
        "trainer.batch_size": "128", "table_defaults.min_count": "2",
        "table_defaults.ttl_s": "5", "table_defaults.prune_alpha": "0.0001",
        "model.history_features": "user_id", "tables.item_id.shards": "2",
        "model.wide_terms": "user_id,user_id*item_id"})
    batcher = Batcher(config.model.sparse_features, config.model.dense_features)
    events = list(SyntheticStream(default()).events(2400))
    original, quality = OnlineTrainer.from_config(config), QualityMetrics()
    for start in range(0, 1200, 128):
        batch = batcher.build(events[start:start + 128])
        quality.record_step(original.train_batch(batch).probs, batch)
    state = TrainingState(original, quality).state_dict()
    keys = {k.rpartition(".")[2] for t in state["tables"].values() for k in t}  # type: ignore[attr-defined]
    assert {"adagrad_state", "evicted_ids"} <= keys and not keys & {"momentum", "tombstones"}
    if written_by == "an earlier release":
        state = earlier_release(state)
    Checkpointer(tmp_path).save(original.steps, state, {}, version=1)
    restored, restored_quality = OnlineTrainer.from_config(config), QualityMetrics()
    checkpoint = Checkpointer(tmp_path).latest()
    assert checkpoint is not None
    TrainingState(restored, restored_quality).load_state_dict(checkpoint.state)
    for start in range(1200, 2400, 200):
        batch = batcher.build(events[start:start + 200])
        assert torch.equal(restored.predict(batch), original.predict(batch))
        assert torch.equal(restored.train_batch(batch).probs, original.train_batch(batch).probs)
    for key, value in original.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key
    for name, table in original.tables.items():
        exported = table.export_all()
        ids, rows = exported.upserted.ids, exported.upserted.values
        exported = restored.tables[name].export_all()
        restored_ids, restored_rows = exported.upserted.ids, exported.upserted.values
        order, restored_order = torch.argsort(ids), torch.argsort(restored_ids)
        assert torch.equal(ids[order], restored_ids[restored_order]), name
        assert torch.equal(rows[order], restored_rows[restored_order]), name
    assert (restored.steps, restored.examples, restored.event_time_ms) == \
        (original.steps, original.examples, original.event_time_ms)
    # The progressive figures (dashboards, `streamrec evaluate`) go on, not from zero.
    assert restored_quality.progress.snapshot() == quality.progress.snapshot()


def test_a_resumed_loop_reads_on_from_the_checkpoints_offsets(tmp_path: Path) -> None:
    # Killed after a checkpoint at event 600: the next process restores the
    # trainer and reads on from event 600, so every event is learned once.
    from streamrec.ingest.source import MemorySource
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "128"})
    events = list(SyntheticStream(default()).events(1000))
    first = TrainingLoop(OnlineTrainer.from_config(config), MemorySource(events), config,
                         checkpointer=Checkpointer(tmp_path))
    assert first.run(max_events=600).examples == 600  # ends with a checkpoint
    source = MemorySource(events)
    second = TrainingLoop(OnlineTrainer.from_config(config), source, config,
                          checkpointer=Checkpointer(tmp_path))
    second.resume()
    stats = second.run()
    assert stats.events == 400 and second.trainer.examples == 1000
    assert source.committed == {("memory", 0): 1000}


class _RecordingSink:
    """A dead-letter sink that logs when letters arrive and when they are made durable."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log, self.fail = log, fail

    def put(self, letters: list[Any]) -> None:
        self.log.append(f"put {len(letters)}")

    def flush(self) -> None:
        if self.fail:
            raise TimeoutError("broker did not acknowledge")
        self.log.append("flush")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fail", [False, True])
def test_dead_letters_are_durable_before_a_checkpoint_passes_their_offsets(
        tmp_path: Path, fail: bool) -> None:
    # A checkpoint (and the commit after it) moves the resume point past the
    # rejected records: a restart never reads them again, so the sink must
    # hold them first. A sink that cannot confirm it skips the checkpoint.
    from streamrec.ingest.source import MemorySource
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "64"})
    records: list[Any] = list(SyntheticStream(default()).events(200))
    records[50] = b"{not json"
    log: list[str] = []

    class LoggingCheckpointer(Checkpointer):
        def save(self, *args: Any, **kwargs: Any) -> Any:
            log.append("save")
            return super().save(*args, **kwargs)

    source = MemorySource(records)
    loop = TrainingLoop(OnlineTrainer.from_config(config), source, config,
                        dead_letters=_RecordingSink(log, fail),
                        checkpointer=LoggingCheckpointer(tmp_path))
    if fail:
        # The last checkpoint failing is the caller's business: what was
        # learned since the last one is lost with the process.
        with pytest.raises(CheckpointError, match="final checkpoint"):
            loop.run()
        assert "save" not in log and source.committed == {}
        assert Checkpointer(tmp_path).latest() is None
    else:
        loop.run()
        assert log == ["put 1", "flush", "save"]
        assert source.committed == {("memory", 0): 200}


def test_the_file_sink_flushes_to_disk(tmp_path: Path) -> None:
    from streamrec.ingest.deadletter import FileDeadLetterSink
    from streamrec.ingest.source import DeadLetter

    sink = FileDeadLetterSink(tmp_path / "dlq.jsonl")
    sink.put([DeadLetter(raw=b"x", kind="malformed", reason="r", origin="o")])
    sink.flush()
    assert (tmp_path / "dlq.jsonl").read_text().count("\n") == 1
    sink.close()


def _trained_loop(tmp_path: Path, **overrides: str) -> Any:
    """A loop over 300 synthetic events whose checkpoints go to ``tmp_path / 'ck'``."""
    from streamrec.ingest.source import MemorySource
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.trainer import OnlineTrainer

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "64", **overrides})
    source = MemorySource(list(SyntheticStream(default()).events(300)))
    return TrainingLoop(OnlineTrainer.from_config(config), source, config,
                        checkpointer=Checkpointer(tmp_path / "ck"))


FOUR = {"table_defaults.shards": "4"}


@pytest.mark.parametrize("base, change, message", [
    ({}, {"model.embedding_dim": "16"}, "model.embedding_dim = 8 in the checkpoint, 16 now"),
    ({}, {"model.hidden": "32"}, "model.hidden = [] in the checkpoint, [32] now"),
    # Fewer shards used to resume quietly with half of every table's rows.
    (FOUR, {"table_defaults.shards": "2"}, "the checkpoint has 4 shard(s), the config 2"),
    (FOUR, {"table_defaults.shards": "8"}, "the checkpoint has 4 shard(s), the config 8"),
    ({}, FOUR, "table user_id: the checkpoint has 1 shard(s), the config 4"),
    (FOUR, {"table_defaults.shards": "1"}, "the checkpoint has 4 shard(s), the config 1"),
    ({}, {"table_defaults.min_count": "3"}, "min_count"),
    ({}, {"table_defaults.prune_alpha": "0.0001"},
     "OptEmbed pruning is on for 0 feature(s) in the checkpoint, 2 now"),
])
def test_resuming_under_another_config_names_what_changed(
        tmp_path: Path, base: dict[str, str], change: dict[str, str], message: str) -> None:
    _trained_loop(tmp_path, **base).run()
    resumed = _trained_loop(tmp_path, **{**base, **change})
    with pytest.raises(CheckpointError) as info:
        resumed.resume()
    assert message in str(info.value)
    assert "cannot resume from" in str(info.value) and "ckpt-" in str(info.value)
    # Settings the state does not depend on resume as before.
    assert _trained_loop(tmp_path, **{**base, "trainer.batch_size": "32"}).resume() == 0


def test_a_refused_start_releases_the_checkpoint_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # `streamrec train` locks the directory; a start that fails (here: an
    # unreadable checkpoint) must not leave it locked for the next attempt.
    import threading

    from prometheus_client import CollectorRegistry

    from streamrec.ingest.decode import encode_json
    from streamrec.cli import train
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default

    monkeypatch.setattr(train, "REGISTRY", CollectorRegistry())
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(encode_json(e) + b"\n"
                                for e in SyntheticStream(default()).events(50)))
    (tmp_path / "ck").mkdir()
    torch.save({"something": "else"}, tmp_path / "ck" / "ckpt-000000000001.pt")
    config = load_config(env={}, overrides={
        "ingest.source": "file", "ingest.path": str(events), "metrics.port": "-1",
        "trainer.checkpoint_dir": str(tmp_path / "ck")})
    with pytest.raises(CheckpointError, match="not a streamrec checkpoint"):
        train.run_training(config, threading.Event())
    Checkpointer(tmp_path / "ck", exclusive=True).close()


def test_a_state_of_two_ranks_is_refused_by_one() -> None:
    from streamrec.config import load_config
    from streamrec.trainer.checkpoint_state import TrainingState
    from streamrec.trainer.trainer import OnlineTrainer

    config = load_config(env={})
    state = TrainingState(OnlineTrainer.from_config(config)).state_dict()
    state["counters"]["world_size"] = 2  # type: ignore[index]
    with pytest.raises(CheckpointError, match="written by 2 trainer rank"):
        TrainingState(OnlineTrainer.from_config(config)).load_state_dict(state)


def test_one_trainer_at_a_time_per_checkpoint_directory(tmp_path: Path) -> None:
    first = Checkpointer(tmp_path, exclusive=True)
    live = tmp_path / "ckpt-000000000005.pt.tmp999999"  # the first trainer, mid-write
    live.write_bytes(b"partial")
    with pytest.raises(CheckpointError, match=r"in use by another trainer \(pid \d+\)"):
        Checkpointer(tmp_path, exclusive=True)
    assert live.exists()  # the refused one deleted nothing
    first.close()
    Checkpointer(tmp_path, exclusive=True).close()
    assert not live.exists()  # once the directory is free, leftovers are cleaned


def test_unreadable_checkpoints_say_why_and_point_at_older_ones(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, {"w": torch.ones(1)}, {}, version=0)
    newest = tmp_path / "ckpt-000000000002.pt"
    newest.write_bytes(b"")  # a zero-byte file: EOFError, whose message is empty
    with pytest.raises(CheckpointError, match="EOFError.*older checkpoint"):
        checkpointer.latest()
    torch.save({"something": "else"}, newest)  # a torch file, not a checkpoint
    with pytest.raises(CheckpointError, match="not a streamrec checkpoint"):
        checkpointer.latest()


def test_the_final_checkpoint_records_the_version_replicas_hold(tmp_path: Path) -> None:
    # Stopping the publisher pushes the final state as one more version. The
    # final checkpoint must come after it: it recorded the version before, so
    # every restart found each replica "ahead" of the trainer.
    from prometheus_client import CollectorRegistry

    from streamrec.serving.replica import ModelReplica
    from streamrec.trainer.sync.publisher import Publisher
    from streamrec.trainer.sync.sink import MemoryDeltaSink

    loop = _trained_loop(tmp_path)
    replica = ModelReplica(registry=CollectorRegistry())
    loop.publisher = Publisher(TrainerParameters(loop.trainer),
                               {"r": MemoryDeltaSink(replica)}, interval_s=60,
                               registry=CollectorRegistry())
    loop.run()
    checkpoint = Checkpointer(tmp_path / "ck").latest()
    assert checkpoint is not None and replica.version >= 1
    assert checkpoint.version == replica.version == loop.publisher.version


def test_offsets_of_a_partition_gone_to_another_consumer_are_neither_kept_nor_committed(
        tmp_path: Path) -> None:
    # Two partitions, then a rebalance gives partition 1 to another member of
    # the group. Its last offset here must not be committed when it comes back
    # (the other member's commit is ahead: the group's offset went backwards),
    # nor kept in checkpoints (a restart re-trained what the other learned).
    from streamrec.ingest.source import SourceBatch
    from streamrec.config import load_config
    from streamrec.synthetic import SyntheticStream, default
    from streamrec.trainer.loop import TrainingLoop
    from streamrec.trainer.trainer import OnlineTrainer

    p0, p1 = ("events", 0), ("events", 1)
    events = list(SyntheticStream(default()).events(40))
    polls = [SourceBatch(events[:20], offsets={p0: 10, p1: 10}, origins=[p0] * 10 + [p1] * 10,
                         assigned=[p0, p1]),
             SourceBatch([], assigned=[]),  # mid-rebalance
             SourceBatch(events[20:30], offsets={p0: 20}, origins=[p0] * 10, assigned=[p0]),
             SourceBatch(events[30:], offsets={p0: 30}, origins=[p0] * 10, assigned=[p0, p1])]

    class Rebalanced:
        def __init__(self) -> None:
            self.exhausted = False
            self.committed: list[dict[tuple[str, int], int]] = []

        def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
            batch = polls.pop(0)
            self.exhausted = not polls
            return batch

        def commit(self, offsets: Any) -> None:
            self.committed.append(dict(offsets))

        def seek(self, offsets: Any) -> None:
            pass

        def close(self) -> None:
            pass

    torch.set_num_threads(1)
    source = Rebalanced()
    config = load_config(env={}, overrides={"trainer.batch_size": "8"})
    loop = TrainingLoop(OnlineTrainer.from_config(config), source,  # type: ignore[arg-type]
                        config, checkpointer=Checkpointer(tmp_path))
    loop.run()
    assert source.committed[-1] == {p0: 30}
    checkpoint = Checkpointer(tmp_path).latest()
    assert checkpoint is not None and checkpoint.offsets == {p0: 30}


def test_a_checkpoint_from_before_wide_terms_resumes_with_them_off() -> None:
    # A release without wide terms wrote no such fields in the model spec: its
    # checkpoints resume under model.wide_terms = "" and, under the default
    # terms, are refused with a message naming the field.
    import json

    from streamrec.config import load_config
    from streamrec.trainer.checkpoint_state import TrainingState
    from streamrec.trainer.quality import QualityMetrics
    from streamrec.trainer.trainer import OnlineTrainer

    off = load_config(env={}, overrides={"model.wide_terms": ""})
    state = TrainingState(OnlineTrainer.from_config(off), QualityMetrics()).state_dict()
    spec = json.loads(str(state["model_spec"]))
    del spec["model"]["wide_terms"], spec["model"]["wide_lr"], spec["model"]["field_scale"]
    state["model_spec"] = json.dumps(spec, sort_keys=True)
    TrainingState(OnlineTrainer.from_config(off), QualityMetrics()).load_state_dict(state)
    default = OnlineTrainer.from_config(load_config(env={}, overrides={}))
    with pytest.raises(CheckpointError, match=r"model.wide_terms = \[\] in the checkpoint"):
        TrainingState(default, QualityMetrics()).load_state_dict(state)


@pytest.mark.parametrize("features", [12, 13])
def test_a_checkpoint_from_before_field_scales_resumes_where_they_are_1(features: int) -> None:
    # A release without field_scale scaled no field. Its checkpoints resume
    # under the default up to 12 sparse features (scale 1); past that the
    # default differs, and the refusal names the field to set.
    import json

    from streamrec.config import load_config
    from streamrec.trainer.checkpoint_state import TrainingState
    from streamrec.trainer.quality import QualityMetrics
    from streamrec.trainer.trainer import OnlineTrainer

    names = ",".join(["user_id", "item_id", *(f"f{k}" for k in range(features - 2))])
    config = load_config(env={}, overrides={"model.sparse_features": names})
    state = TrainingState(OnlineTrainer.from_config(config), QualityMetrics()).state_dict()
    spec = json.loads(str(state["model_spec"]))
    assert spec["model"]["field_scale"] == min(1.0, 12 / features)
    del spec["model"]["field_scale"]
    state["model_spec"] = json.dumps(spec, sort_keys=True)
    trainer = OnlineTrainer.from_config(config)
    if features <= 12:
        TrainingState(trainer, QualityMetrics()).load_state_dict(state)
        return
    with pytest.raises(CheckpointError, match=r"model.field_scale = 1.0 in the checkpoint"):
        TrainingState(trainer, QualityMetrics()).load_state_dict(state)
    unscaled = load_config(env={}, overrides={"model.sparse_features": names,
                                              "model.field_scale": "1"})
    TrainingState(OnlineTrainer.from_config(unscaled), QualityMetrics()).load_state_dict(state)

"""The learned-offsets ledger: what each checkpoint took in, offset by offset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from streamrec.ingest.source import SourceBatch
from streamrec.config import load_config
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.ledger import LEDGER_NAME, coverage, read_ledger
from streamrec.trainer.loop import TrainingLoop
from streamrec.trainer.trainer import OnlineTrainer

P0, P1 = ("events", 0), ("events", 1)


class Partitioned:
    """Two partitions of labelled examples, 25 records a partition per poll."""

    def __init__(self, n: int) -> None:
        events = [e._replace(type="example", label=float(e.label or 0))
                  for e in SyntheticStream(default()).events(n)]
        self.logs = {P0: events[::2], P1: events[1::2]}
        self.position = {P0: 0, P1: 0}
        self.sought: list[tuple[dict[Any, int], dict[str, str] | None]] = []

    @property
    def exhausted(self) -> bool:
        return all(self.position[k] >= len(v) for k, v in self.logs.items())

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        out = SourceBatch(events=[], origins=[], assigned=[P0, P1], logs={"events": "id-1"})
        for key, log in self.logs.items():
            first = self.position[key]
            chunk = log[first:first + min(25, max_events // 2)]
            if chunk:
                out.events += chunk
                out.origins += [key] * len(chunk)  # type: ignore[operator]
                out.offsets[key] = self.position[key] = first + len(chunk)
                out.spans[key] = (first, len(chunk))
        return out

    def commit(self, offsets: Any) -> None:
        pass

    def seek(self, offsets: dict[Any, int], logs: dict[str, str] | None = None) -> None:
        self.sought.append((dict(offsets), logs))
        self.position.update(offsets)

    def close(self) -> None:
        pass


def loop(tmp_path: Path, source: Partitioned) -> TrainingLoop:
    config = load_config(env={}, overrides={"trainer.batch_size": "16"})
    return TrainingLoop(OnlineTrainer.from_config(config), source,  # type: ignore[arg-type]
                        config, checkpointer=Checkpointer(tmp_path))


def test_the_ledger_tiles_each_partition_once_across_a_crash_between_its_writes(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    first = loop(tmp_path, Partitioned(400))
    first.run(max_events=200)  # ends with a checkpoint (and its ledger line)
    assert [c.get("seq") for c in read_ledger(tmp_path)] == [1]
    # Killed after the checkpoint's rename, before its ledger line was whole.
    path = tmp_path / LEDGER_NAME
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    source = Partitioned(400)
    second = loop(tmp_path, source)
    second.resume()
    assert source.sought == [({P0: 100, P1: 100}, {"events": "id-1"})]
    second.run()
    lines = read_ledger(tmp_path)
    assert [line["seq"] for line in lines] == [1, 2]
    assert all(json.loads(t) for t in path.read_text().splitlines())  # the torn line went
    got = coverage(lines)
    assert got == {("events", p, "id-1"): {"first": 0, "next": 200, "records": 200,
                                           "examples": 200, "twice": [], "gaps": []}
                   for p in (0, 1)}
    assert second.trainer.examples == 400


def test_a_lineage_abandoned_for_an_older_checkpoint_is_not_read(tmp_path: Path) -> None:
    # Lines 3 and 4 came from a checkpoint moved away; the trainer resumed from 2.
    spans = [{"topic": "t", "partition": 0, "log": "a", "first": f, "next": f + 10,
              "records": 10, "examples": 10} for f in range(0, 60, 10)]
    lines = [{"seq": 1, "spans": [spans[0]]}, {"seq": 2, "spans": [spans[1]]},
             {"seq": 3, "spans": [spans[2]]}, {"seq": 4, "spans": [spans[3]]},
             {"seq": 3, "spans": [spans[2]]}, {"seq": 4, "spans": [spans[3]]},
             {"seq": 5, "spans": [spans[4]]}]
    (tmp_path / LEDGER_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert coverage(lines)[("t", 0, "a")]["twice"] == [[20, 30], [30, 40]]  # read naively
    chain = read_ledger(tmp_path)
    assert [c["seq"] for c in chain] == [1, 2, 3, 4, 5]
    assert coverage(chain)[("t", 0, "a")] == {"first": 0, "next": 50, "records": 50,
                                              "examples": 50, "twice": [], "gaps": []}


def test_impressions_waiting_at_a_checkpoint_are_learned_once_after_a_restart(
        tmp_path: Path) -> None:
    # A restart resumes after the checkpoint's offsets: impressions read before
    # them and still waiting for their window must come back from the checkpoint
    # (neither lost nor read again), and be labelled as without the restart.
    from streamrec.ingest.joiner import Joiner
    from streamrec.ingest.source import MemorySource

    torch.set_num_threads(1)
    config = load_config(env={}, overrides={"trainer.batch_size": "16"})
    # Impressions a second apart, and a click 5 s after each positive one.
    events: list[Any] = []
    for i, e in enumerate(SyntheticStream(default()).events(1500)):
        t = 1_700_000_000_000 + i * 1000
        events.append(e._replace(type="impression", label=None, request_id=f"r{i}",
                                 timestamp_ms=t))
        if e.label:
            events.append(e._replace(type="click", label=None, request_id=f"r{i}",
                                     timestamp_ms=t + 5000))
    events.sort(key=lambda e: e.timestamp_ms)

    def joiner() -> Joiner:
        return Joiner(config.ingest.action_types, config.ingest.join_window_s)

    whole = TrainingLoop(OnlineTrainer.from_config(config), MemorySource(events), config,
                         joiner=joiner())
    expected = whole.run()
    assert 0 < expected.positives < expected.examples < len(events)

    first = TrainingLoop(OnlineTrainer.from_config(config), MemorySource(events), config,
                         joiner=joiner(),
                         checkpointer=Checkpointer(tmp_path / "ckpt"))
    first.run(max_events=900)  # ends with a checkpoint, impressions waiting
    assert first.joiner is not None and first.joiner.pending > 0
    second = TrainingLoop(OnlineTrainer.from_config(config), MemorySource(events), config,
                          joiner=joiner(),
                          checkpointer=Checkpointer(tmp_path / "ckpt"))
    second.resume()
    assert second.joiner is not None and second.joiner.pending == first.joiner.pending
    second.run()
    assert second.trainer.examples == expected.examples
    assert first.stats.positives + second.stats.positives == expected.positives

"""Exactly once across crashes: `streamrec train` killed with SIGKILL over and over.

A 3-partition topic on a real broker (Tansu) is produced before and while the
trainer runs; the trainer is killed at random points (while it starts, while it
learns, and after it has caught up and sits idle), the broker is paused once, and
after a clean stop the learned-offsets ledger (trainer.ledger) is compared, offset
by offset, with what the producer wrote: every offset learned exactly once, and
the final checkpoint's trainer has learned exactly one example per event.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka import KafkaProducer

from streamrec.ingest.decode import encode_json
from streamrec.ingest.kafka_source import create_topics
from streamrec.synthetic import SyntheticStream, default
from tests.integration.conftest import start_broker
from tests.integration.processes import kafka_train_config, start_cli, stop, wait_until
from streamrec.trainer.ledger import LEDGER_NAME, coverage, read_ledger

pytestmark = pytest.mark.integration

PARTITIONS = 3
EVENTS = 6000  # a quarter before the first start, the rest while the trainer is killed
KILLS_LEARNING = 12  # at random points while it learns (some while it starts up)
KILLS_CAUGHT_UP = 8  # after it has learned everything produced and sits idle


def _config(tmp_path: Path, bootstrap: str, topic: str) -> Path:
    return kafka_train_config(
        tmp_path / "streamrec.toml", bootstrap, topic, f"exactly-{topic}",
        ingest=f'session_timeout_ms = 6000\ndead_letter_path = "{tmp_path / "dead.jsonl"}"',
        trainer=f'batch_size = 64\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
                "checkpoint_interval_s = 0.5\nlog_interval_s = 5.0",
        rest="[metrics]\nport = -1")


class _Producer:
    """Writes labelled examples, counting what each partition holds."""

    def __init__(self, bootstrap: str, topic: str, events: int = EVENTS,
                 partitions: int = PARTITIONS) -> None:
        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.events = [e._replace(type="example", label=float(e.label or 0))
                       for e in SyntheticStream(default()).events(events)]
        self.written = {p: 0 for p in range(partitions)}
        self.sent = 0

    def write(self, n: int, pace_s: float = 0.0) -> None:
        last = min(len(self.events), self.sent + n)
        while self.sent < last:
            chunk = self.events[self.sent:min(self.sent + 50, last)]
            futures = [self.producer.send(self.topic, key=str(e.user_id).encode(),
                                          value=encode_json(e)) for e in chunk]
            self.producer.flush()
            for f in futures:
                meta = f.get(timeout=30)
                assert meta.offset == self.written[meta.partition]  # one log, no gaps
                self.written[meta.partition] += 1
            self.sent += len(chunk)
            time.sleep(pace_s)


def _caught_up(ckpt: Path, topic: str, ends: dict[int, int]) -> bool:
    reached = {key[1]: c["next"] for key, c in coverage(read_ledger(ckpt)).items()
               if key[0] == topic}
    return all(reached.get(p, 0) >= end for p, end in ends.items())


def _ledger_size(ckpt: Path) -> int:
    path = ckpt / LEDGER_NAME
    return path.stat().st_size if path.exists() else 0


def _checkpointed_since(ckpt: Path, started: float) -> bool:
    """A checkpoint written after ``started``: the process is in its loop."""
    return any(p.stat().st_mtime > started for p in ckpt.glob("ckpt-*.pt"))


# 21 trainer starts, each importing torch: 6 minutes on a busy 2-core machine.
@pytest.mark.timeout(1200)
def test_every_event_is_learned_exactly_once_across_sigkills(tmp_path: Path) -> None:
    rng = random.Random(15)
    topic = f"exactly-{uuid.uuid4().hex[:8]}"
    ckpt = tmp_path / "ckpt"
    figures: dict[str, Any] = {"kills_starting": 0, "kills_learning": 0, "kills_caught_up": 0,
                               "broker_paused": 0}
    per_run = -(-(EVENTS - EVENTS // 4) // KILLS_LEARNING)
    with start_broker() as (address, broker):
        create_topics(address, [topic], partitions=PARTITIONS)
        producer = _Producer(address, topic)
        producer.write(EVENTS // 4)
        cfg = _config(tmp_path, address, topic)
        try:
            for run in range(KILLS_LEARNING + KILLS_CAUGHT_UP):
                started = time.time()
                trainer = start_cli(["train", "--config", str(cfg)], tmp_path / f"train{run}.log")
                writer = None
                try:
                    if run < KILLS_LEARNING:
                        # Records arrive while it starts and learns.
                        writer = threading.Thread(target=producer.write, args=(per_run, 0.05))
                        writer.start()
                        if run % 5 == 2:
                            time.sleep(rng.uniform(0.2, 4.0))  # while it starts up
                            figures["kills_starting"] += 1
                        else:
                            size = _ledger_size(ckpt)
                            wait_until("the trainer to learn",
                                       lambda: _ledger_size(ckpt) > size, timeout_s=240)
                            if run == 6:  # a broker pause while the trainer learns
                                os.kill(broker.pid, signal.SIGSTOP)
                                time.sleep(3.0)
                                os.kill(broker.pid, signal.SIGCONT)
                                figures["broker_paused"] += 1
                            time.sleep(rng.uniform(0.0, 2.5))
                            figures["kills_learning"] += 1
                    else:
                        # Caught up before it starts: once it has its partitions, an
                        # offset taken for "past the end" shows as records read again.
                        log = tmp_path / f"train{run}.log"
                        wait_until("the trainer to resume its partitions",
                                   lambda: log.read_text().count("resuming at checkpoint")
                                   == PARTITIONS, timeout_s=240)
                        time.sleep(rng.uniform(1.0, 3.0))  # idle, checkpointing
                        figures["kills_caught_up"] += 1
                    assert trainer.poll() is None, \
                        (tmp_path / f"train{run}.log").read_text()[-3000:]
                finally:
                    trainer.kill()
                    trainer.wait()
                    if writer is not None:
                        writer.join()
            assert producer.sent == EVENTS
            # A last run, stopped cleanly once it has caught up.
            started = time.time()
            trainer = start_cli(["train", "--config", str(cfg)], tmp_path / "final.log")
            try:
                wait_until("the last trainer to catch up",
                           lambda: _checkpointed_since(ckpt, started)
                           and _caught_up(ckpt, topic, producer.written), timeout_s=240)
            finally:
                code = stop(trainer)
            assert code == 0, (tmp_path / "final.log").read_text()[-3000:]
        finally:
            producer.producer.close()

    ends = producer.written
    assert sum(ends.values()) == EVENTS
    lines = read_ledger(ckpt)
    learned = {p: [0] * end for p, end in ends.items()}
    examples = 0
    for line in lines:
        for span in line["spans"]:
            assert span["topic"] == topic
            assert span["records"] == span["next"] - span["first"]
            for offset in range(span["first"], span["next"]):
                learned[span["partition"]][offset] += 1
            examples += span["examples"]
    counts = [n for offsets in learned.values() for n in offsets]
    figures.update(events=EVENTS, learned_once=counts.count(1), lost=counts.count(0),
                   twice=sum(1 for n in counts if n > 1), checkpoints=len(lines))
    print("\nexactly-once figures: " + json.dumps(figures))
    assert figures["lost"] == 0 and figures["twice"] == 0, figures
    assert sum(figures[k] for k in ("kills_starting", "kills_learning",
                                    "kills_caught_up")) >= 20
    assert examples == EVENTS
    # The model itself: one training example per event, in the final checkpoint.
    final = max(ckpt.glob("ckpt-*.pt"))
    state = torch.load(final, weights_only=True)["state"]
    assert state["counters"]["examples"] == EVENTS

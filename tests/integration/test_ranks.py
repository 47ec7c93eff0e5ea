"""`streamrec train` as 2 ranks under torchrun, on a real broker, pushing to a real replica.

Each rank reads its share of a 4-partition topic and owns half of every table's
rows (the default model's: embeddings and history counts); both step together.
Every event is learned exactly once across the ranks (the ranks' learned-offsets
ledgers, offset by offset, and the examples in their final checkpoints), one replica receives one stream of versions holding every
rank's rows, and a rank killed with SIGKILL mid-stream has torchrun restart the
group from the ranks' checkpoints with nothing lost or learned twice. A topic
with fewer partitions than ranks is refused.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from streamrec.config import IngestConfig
from streamrec.errors import ConfigError
from streamrec.ingest.kafka_source import KafkaSource, create_topics
from tests.integration.conftest import start_broker
from tests.integration.processes import (ROOT, child_pids, free_port, kafka_train_config, scrape,
                                         start_cli, stop, wait_until)
from tests.integration.test_end_to_end import TOKEN, serving_config
from tests.integration.test_exactly_once import _Producer
from streamrec.trainer.ledger import coverage, read_ledger

pytestmark = pytest.mark.integration

PARTITIONS = 4
RANKS = 2
EVENTS = 3000
KILLS = 3


def _config(tmp_path: Path, bootstrap: str, topic: str, sync_port: int | None,
            batch: str = "batch_size = 64") -> Path:
    replicas = f'replicas = ["127.0.0.1:{sync_port}"]' if sync_port else "replicas = []"
    # The default model: history features on user_id and item_id.
    return kafka_train_config(
        tmp_path / "train.toml", bootstrap, topic, f"ranks-{topic}",
        trainer=f'{batch}\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
                "checkpoint_interval_s = 0.5\nlog_interval_s = 2.0",
        rest=f'[sync]\n{replicas}\ntoken = "{TOKEN}"\n\n[metrics]\nport = -1')


def _torchrun(cfg: Path, log_path: Path, max_restarts: int = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS),
             "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
             "--max-restarts", str(max_restarts), "-m", "streamrec.cli", "train",
             "--config", str(cfg)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def _ledgers(ckpt: Path) -> list[list[dict]]:
    return [read_ledger(ckpt / f"rank{r}") for r in range(RANKS)]


def _caught_up(ckpt: Path, ends: dict[int, int]) -> bool:
    reached: dict[int, int] = {}
    for lines in _ledgers(ckpt):
        for key, c in coverage(lines).items():
            reached[key[1]] = c["next"]
    return all(reached.get(p, 0) >= end for p, end in ends.items())


def _learned_once(ckpt: Path, topic: str, ends: dict[int, int]) -> None:
    """Every offset learned exactly once, by the rank that owns its partition."""
    learned = {p: [0] * end for p, end in ends.items()}
    examples = 0
    for rank, lines in enumerate(_ledgers(ckpt)):
        for line in lines:
            for span in line["spans"]:
                assert span["topic"] == topic
                assert span["partition"] % RANKS == rank, "a rank read another's partition"
                for offset in range(span["first"], span["next"]):
                    learned[span["partition"]][offset] += 1
                examples += span["examples"]
    counts = [n for offsets in learned.values() for n in offsets]
    assert (counts.count(0), sum(n > 1 for n in counts)) == (0, 0), "lost / learned twice"
    assert examples == EVENTS
    finals = [torch.load(max((ckpt / f"rank{r}").glob("ckpt-*.pt")), weights_only=True)
              for r in range(RANKS)]
    # Every rank checkpointed at the same step; together they learned each event once.
    assert len({f["step"] for f in finals}) == 1
    assert sum(f["state"]["counters"]["examples"] for f in finals) == EVENTS


def _lines(ckpt: Path) -> int:
    return sum(len(lines) for lines in _ledgers(ckpt)) if ckpt.exists() else 0


@pytest.mark.timeout(600)
def test_two_ranks_learn_each_event_once_and_push_one_version_stream(tmp_path: Path) -> None:
    topic = f"ranks-{uuid.uuid4().hex[:8]}"
    serving_cfg, serving_ports = serving_config(tmp_path)
    ckpt = tmp_path / "ckpt"
    with start_broker() as (address, _):
        create_topics(address, [topic], partitions=PARTITIONS)
        producer = _Producer(address, topic, events=EVENTS, partitions=PARTITIONS)
        producer.write(EVENTS)
        producer.producer.close()
        serving = start_cli(["serve", "--config", str(serving_cfg)], tmp_path / "serve.log")
        # With the warm-up schedule in play (it follows the examples of every rank;
        # the ranks' partitions hold different counts).
        trainer = _torchrun(_config(tmp_path, address, topic, serving_ports["sync_port"],
                                    "batch_size = 512\nwarmup_batch_size = 64"),
                            tmp_path / "train.log")
        versions: list[float] = []
        try:
            def served() -> dict[str, float]:
                m = scrape(serving_ports["metrics"])
                versions.append(m["streamrec_serving_model_version"])
                return m

            wait_until("serving to answer", lambda: _safe(served), timeout_s=60)
            wait_until("the ranks to learn every event",
                       lambda: trainer.poll() is None and _caught_up(ckpt, producer.written)
                       or trainer.poll() is not None, timeout_s=300)
            assert trainer.poll() is None, (tmp_path / "train.log").read_text()[-4000:]
            time.sleep(2.0)  # a publish round after the last step
            code = stop(trainer, timeout_s=60)
            metrics = served()
        finally:
            stop(trainer)
            assert stop(serving) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert code == 0 or "SignalException" in log, log[-4000:]
    _learned_once(ckpt, topic, producer.written)
    finals = [torch.load(max((ckpt / f"rank{r}").glob("ckpt-*.pt")), weights_only=True)
              for r in range(RANKS)]
    # One stream of versions: never back, ending at the version rank 0 checkpointed.
    assert versions == sorted(versions) and versions[-1] > 1
    assert metrics["streamrec_serving_model_version"] == finals[0]["version"]
    # The replica holds every rank's rows, each once (history counts included).
    for table in ("user_id", "item_id", "user_id#history", "item_id#history"):
        shards = [f["state"]["tables"][table]["ids"] for f in finals]
        assert all(len(s) for s in shards) and not set(shards[0].tolist()) & set(shards[1].tolist())
        assert metrics[f'streamrec_serving_table_rows{{table="{table}"}}'] == sum(map(len, shards))


def _safe(check) -> bool:
    try:
        check()
        return True
    except Exception:
        return False


@pytest.mark.timeout(900)
def test_a_rank_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(16)
    topic = f"ranks-kill-{uuid.uuid4().hex[:8]}"
    ckpt = tmp_path / "ckpt"
    kills = 0
    with start_broker() as (address, _):
        create_topics(address, [topic], partitions=PARTITIONS)
        producer = _Producer(address, topic, events=EVENTS, partitions=PARTITIONS)
        producer.write(EVENTS // 4)
        trainer = _torchrun(_config(tmp_path, address, topic, None), tmp_path / "train.log",
                            max_restarts=KILLS)
        try:
            for _ in range(KILLS):
                # Records arrive while the ranks (re)start and learn; one of them is
                # killed once they have checkpointed some.
                writer = threading.Thread(target=producer.write,
                                          args=((EVENTS - EVENTS // 4) // KILLS, 0.3))
                writer.start()
                lines = _lines(ckpt)
                wait_until("the ranks to learn", lambda: _lines(ckpt) > lines, timeout_s=240)
                time.sleep(rng.uniform(0.0, 1.0))
                os.kill(rng.choice(child_pids(trainer.pid)), signal.SIGKILL)
                kills += 1
                writer.join()
            producer.write(EVENTS)  # (the rest of the division)
            log = tmp_path / "train.log"
            wait_until("torchrun to restart the ranks after each kill",
                       lambda: log.read_text().count("resumed from") >= RANKS * KILLS,
                       timeout_s=240)
            wait_until("the restarted ranks to learn every event",
                       lambda: _caught_up(ckpt, producer.written), timeout_s=300)
            assert trainer.poll() is None, (tmp_path / "train.log").read_text()[-4000:]
            stop(trainer, timeout_s=60)
        finally:
            producer.producer.close()
            stop(trainer)
    assert kills == KILLS
    _learned_once(ckpt, topic, producer.written)


def test_a_topic_with_fewer_partitions_than_ranks_is_refused(kafka_broker: str) -> None:
    topic = f"ranks-narrow-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker, [topic], partitions=1)
    config = IngestConfig(source="kafka", bootstrap_servers=[kafka_broker], topics=[topic])
    with pytest.raises(ConfigError, match=f"topic '{topic}' has 1 partition"):
        KafkaSource(config, share=(1, 2))
    # Rank 0 of 1 partition's worth: assigned what p % world gives it.
    source = KafkaSource(config, share=(0, 1))
    try:
        assert [key for key in source.poll(10, 0.5).assigned] == [(topic, 0)]
    finally:
        source.close()


def test_ranks_resume_from_the_step_every_rank_checkpointed(tmp_path: Path) -> None:
    # Rank 1 was killed while rank 0 wrote a newer checkpoint: both load the older
    # one, and rank 0's newer file is set aside, not deleted.
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS),
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
         "tests/integration/ranks_agree_worker.py", str(tmp_path)],
        cwd=ROOT, check=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1",
             "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert [(tmp_path / f"loads{r}").read_text() for r in range(RANKS)] == ["10", "10"]
    assert (tmp_path / "rank0" / "ckpt-000000000020.pt.abandoned").exists()

"""The production topology on real parts: broker, `streamrec train`, `streamrec serve`.

Events are replayed into a real Kafka-protocol broker with `streamrec replay`;
a trainer process consumes them in a consumer group and pushes parameters over
gRPC to a separate serving process, which answers Predict. Processes are
stopped with SIGTERM, and killed with SIGKILL for the recovery test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from kafka import KafkaProducer

from streamrec.ingest.kafka_source import create_topics
from streamrec.client import RecommenderClient
from streamrec.synthetic import default, write_jsonl
from tests.integration.processes import (ROOT, free_port, kafka_train_config, scrape, start_cli,
                                         stop, wait_until)

pytestmark = pytest.mark.integration

TOKEN = "test-sync-token"
EVENTS = 3000


def config_file(tmp_path: Path, bootstrap: str, topic: str, serving: dict[str, int],
                trainer_metrics: int, checkpoint_interval_s: float = 2.0) -> Path:
    return kafka_train_config(
        tmp_path / "streamrec.toml", bootstrap, topic, f"e2e-{topic}",
        ingest=f'dead_letter_path = "{tmp_path / "dead.jsonl"}"',
        trainer=f'batch_size = 128\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
                f"checkpoint_interval_s = {checkpoint_interval_s}\nlog_interval_s = 1.0",
        rest=f"""[sync]
replicas = ["127.0.0.1:{serving['sync_port']}"]
interval_s = 0.5
token = "{TOKEN}"

[serving]
port = {serving['port']}
sync_port = {serving['sync_port']}
token = "{TOKEN}"

[metrics]
port = {trainer_metrics}""")


def replay(path: Path, topic: str, bootstrap: str) -> None:
    subprocess.run([sys.executable, "-m", "streamrec.cli", "replay", str(path), "--topic", topic,
                    "--bootstrap-servers", bootstrap, "--quiet"], cwd=ROOT, check=True,
                   timeout=120)


def examples_learned(metrics_port: int) -> float:
    return scrape(metrics_port).get("streamrec_trainer_examples_total", 0.0)


def serving_config(tmp_path: Path, model: str = "") -> tuple[Path, dict[str, int]]:
    """A replica's config (``model``: more lines of its [model] table) and its ports."""
    ports = {"port": free_port(), "sync_port": free_port(), "metrics": free_port()}
    cfg = tmp_path / "serving.toml"
    cfg.write_text(f"""
[model]
sparse_features = ["user_id", "item_id", "category", "country"]
{model}
[serving]
port = {ports['port']}
sync_port = {ports['sync_port']}
token = "{TOKEN}"
workers = 1
[metrics]
port = {ports['metrics']}
""")
    return cfg, ports


@pytest.fixture
def serving_proc(tmp_path: Path):
    cfg, ports = serving_config(tmp_path)
    proc = start_cli(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    client = RecommenderClient(f"127.0.0.1:{ports['port']}", timeout_s=5)
    wait_until("serving to answer health checks", lambda: client.health(), timeout_s=60)
    yield ports, client, proc
    client.close()
    assert stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]


def test_kafka_train_serve_loop(kafka_broker: str, tmp_path: Path, serving_proc) -> None:
    ports, client, _ = serving_proc
    topic = "e2e-events"
    create_topics(kafka_broker, [topic], partitions=2)
    events = tmp_path / "events.jsonl"
    write_jsonl(events, EVENTS, default())

    # Before any parameters arrive, Predict refuses clearly.
    with pytest.raises(grpc.RpcError) as info:
        client.predict(user_id=1, item_ids=[1, 2, 3])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    replay(events, topic, kafka_broker)
    # A producer that is not streamrec's sends a malformed event.
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    producer.send(topic, b'{"type": "example", "user_id": "no-timestamp", "item_id": 1, '
                  b'"label": 1}').get(timeout=30)
    producer.close()
    trainer_metrics = free_port()
    cfg = config_file(tmp_path, kafka_broker, topic, ports, trainer_metrics)
    trainer = start_cli(["train", "--config", str(cfg)], tmp_path / "train.log")
    try:
        first = wait_until("a first model version in serving",
                           lambda: client.predict(user_id=1, item_ids=list(range(1, 41))),
                           timeout_s=90)
        wait_until("the trainer to learn every valid event",
                   lambda: examples_learned(trainer_metrics) >= EVENTS, timeout_s=120)
        later = wait_until(
            "serving to receive the trained parameters",
            lambda: (r := client.predict(user_id=1, item_ids=list(range(1, 41))))
            and r.model_version > first.model_version + 2 and r, timeout_s=30)
        assert later.scores != first.scores
        assert torch.tensor(later.scores).std() > 0  # candidates are told apart
        assert all(0.0 < s < 1.0 for s in later.scores)
        metrics = scrape(trainer_metrics)
        assert metrics["streamrec_trainer_examples_total"] == EVENTS
        assert metrics['streamrec_ingest_dead_letters_total{kind="missing_field"}'] == 1
    finally:
        code = stop(trainer)
    assert code == 0, (tmp_path / "train.log").read_text()[-3000:]
    dead = (tmp_path / "dead.jsonl").read_text()
    assert "no-timestamp" in dead and "timestamp_ms" in dead
    assert list((tmp_path / "ckpt").glob("ckpt-*.pt"))
    serving_metrics = scrape(ports["metrics"])
    assert serving_metrics["streamrec_serving_model_version"] >= later.model_version


def test_trainer_killed_with_sigkill_resumes_without_losing_events(
        kafka_broker: str, tmp_path: Path, serving_proc) -> None:
    ports, client, _ = serving_proc
    topic = "e2e-recovery"
    create_topics(kafka_broker, [topic], partitions=2)
    events = tmp_path / "events.jsonl"
    write_jsonl(events, EVENTS, default())
    lines = events.read_text().splitlines(keepends=True)
    half = EVENTS // 2
    first_half, second_half = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first_half.write_text("".join(lines[:half]))
    second_half.write_text("".join(lines[half:]))
    metrics_port = free_port()
    cfg = config_file(tmp_path, kafka_broker, topic, ports, metrics_port,
                      checkpoint_interval_s=1.0)

    def checkpointed_examples() -> int:
        found = sorted((tmp_path / "ckpt").glob("ckpt-*.pt"))
        if not found:
            return 0
        return int(torch.load(found[-1], weights_only=True)["state"]["counters"]["examples"])

    replay(first_half, topic, kafka_broker)
    first = start_cli(["train", "--config", str(cfg)], tmp_path / "train1.log")
    try:
        wait_until("a checkpoint covering the first half",
                   lambda: checkpointed_examples() == half, timeout_s=90)
        replay(second_half, topic, kafka_broker)
        wait_until("the trainer to learn from the second half",
                   lambda: examples_learned(metrics_port) > half, timeout_s=60)
    finally:
        first.kill()  # SIGKILL: no shutdown hook, no final checkpoint
        first.wait()
    learned_before = checkpointed_examples()
    assert half <= learned_before <= EVENTS

    second = start_cli(["train", "--config", str(cfg)], tmp_path / "train2.log")
    try:
        # The restarted trainer resumes from its newest checkpoint and reads
        # on from the offsets stored in it.
        wait_until("the restarted trainer to catch up",
                   lambda: examples_learned(metrics_port) >= EVENTS - learned_before,
                   timeout_s=120)
    finally:
        assert stop(second) == 0, (tmp_path / "train2.log").read_text()[-3000:]
    # Nothing lost, nothing learned twice: whatever the killed run learned
    # after its last checkpoint died with it and was learned again once.
    assert checkpointed_examples() == EVENTS
    assert client.predict(user_id=1, item_ids=[1, 2]).model_version > 0


def test_a_replica_killed_and_restarted_is_resynced_by_the_running_trainer(
        kafka_broker: str, tmp_path: Path) -> None:
    # SIGKILL a serving process while the trainer publishes; a new one on the
    # same ports starts empty (version 0), and the trainer brings it back with
    # a full snapshot without being restarted itself.
    topic = "e2e-resync"
    create_topics(kafka_broker, [topic], partitions=1)
    events = tmp_path / "events.jsonl"
    write_jsonl(events, EVENTS, default())
    replay(events, topic, kafka_broker)
    serving_cfg, ports = serving_config(tmp_path)
    client = RecommenderClient(f"127.0.0.1:{ports['port']}", timeout_s=5)
    serving = start_cli(["serve", "--config", str(serving_cfg)], tmp_path / "serve1.log")
    trainer = start_cli(["train", "--config", str(config_file(tmp_path, kafka_broker, topic,
                                                             ports, free_port()))],
                        tmp_path / "train.log")
    try:
        before = wait_until("a model version in serving",
                            lambda: client.predict(user_id=1, item_ids=[1, 2]), timeout_s=90)
        serving.kill()
        serving.wait()
        serving = start_cli(["serve", "--config", str(serving_cfg)], tmp_path / "serve2.log")
        # It gets the trainer's current version: the one served before if the
        # trainer has learned nothing since (a version is made only on change).
        after = wait_until(
            "the restarted replica to be resynced",
            lambda: (r := client.predict(user_id=1, item_ids=[1, 2]))
            and r.model_version >= before.model_version and r, timeout_s=90)
        assert all(0.0 < s < 1.0 for s in after.scores)
        assert trainer.poll() is None  # the trainer went on throughout
    finally:
        client.close()
        trainer_code, serving_code = stop(trainer), stop(serving)
    assert trainer_code == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert serving_code == 0, (tmp_path / "serve2.log").read_text()[-3000:]

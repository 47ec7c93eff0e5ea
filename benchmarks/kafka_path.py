"""The deployed Kafka path: produce, consume, train, against a bare consumer and file replay.

One run starts a Tansu broker (the integration tests' ``start_broker``) and
writes a JSONL file of synthetic events (the ``drifting`` stream, fixed seed).
Each round produces the file into new topics, each producer arm in a fresh
Python process:

- ``replay``      :func:`ingest.replay.replay`, what ``streamrec replay`` runs
                  (the batch producer, :mod:`ingest.batch_producer`);
- ``replay-kafkaproducer`` the baseline: the same file read and validated,
                  each event encoded again and sent with one
                  ``KafkaProducer.send()`` (acks=all, idempotent, 1 MiB batches);
- ``produce-prebuilt`` the broker's own limit: the file's record batches
                  built beforehand, then only Produce requests sent (one in
                  flight, as the batch producer does per partition);

then reads the ``replay`` topic from its start once per consumer arm, each
in a fresh Python process and its own consumer group:

- ``bare``        a plain kafka-python consumer with the trainer's settings
                  (:func:`ingest.kafka_source.consumer_settings`): poll and
                  touch each value;
- ``bare-fast``   the same with :mod:`ingest.kafka_records` installed, as the
                  trainer's consumer has it: what reading alone costs;
- ``source``      :class:`~ingest.kafka_source.KafkaSource` polls (fetch + decode
                  into events), no training;
- ``train-kafka`` ``streamrec train``'s code path (:func:`streamrec.train.run_training`)
                  on the topic;
- ``train-file``  the same code path on the same events from the JSONL file
                  (``ingest.source = file``);
- on request, ``bare-no-crc`` (``bare`` without CRC checks) and ``bare-pure-crc``
  (``bare`` without the ``crc32c`` extension).

Each consumer arm is timed from the end of its first poll that returned
records (the group join is not throughput) to the last record (bare, source)
or to ``run_training``'s return (train arms), and counts the records after
that first poll; its CPU time (all threads) is measured over the same span.
A producer arm is timed from its client's start (connected) to the broker's
last acknowledgement.
Reported: the median of the rounds per arm, and ratios of medians. The
machine is shared and noisy: events per CPU second vary less than events/s.

    python -m benchmarks.kafka_path                   # 200k events, 3 rounds, ~5 min
    python -m benchmarks.kafka_path --events 50000 --rounds 1 --arms bare,train-kafka
    python -m benchmarks.kafka_path --arms train-kafka --result kafka_path_replay
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.report import format_table, write_result

ARMS = ("bare", "bare-fast", "source", "train-kafka", "train-file")
PRODUCERS = ("replay", "replay-kafkaproducer", "produce-prebuilt")
# As benchmarks/ingest_loop.py, so train-file here is its ``loop`` arm.
OVERRIDES = {"model.sparse_features": "user_id,item_id,category,country,hour",
             "model.dense_features": "price", "metrics.port": "-1", "trainer.threads": "1",
             "trainer.log_interval_s": "3600"}


def _config(arm: str, broker: str, topic: str, path: str) -> Any:
    from streamrec.config import load_config

    overrides = dict(OVERRIDES)
    if arm == "train-file":
        overrides.update({"ingest.source": "file", "ingest.path": path})
    else:
        overrides.update({"ingest.bootstrap_servers": broker, "ingest.topics": topic,
                          "ingest.group_id": f"bench-{arm}"})
    return load_config(env={}, overrides=overrides)


class _Clock:
    """Times the records after the first poll that returned any (wall and process CPU)."""

    def __init__(self) -> None:
        self.seen = self.first = 0
        self.started = self.cpu = 0.0

    def polled(self, n: int) -> None:
        if n and not self.seen:
            self.started, self.cpu, self.first = time.perf_counter(), time.process_time(), n
        self.seen += n

    def figures(self) -> dict[str, float]:
        return {"events": self.seen - self.first, "seconds": time.perf_counter() - self.started,
                "cpu_seconds": time.process_time() - self.cpu}


def _bare(arm: str, config: Any, expected: int) -> dict[str, float]:
    from kafka import KafkaConsumer

    from streamrec.ingest import kafka_records
    from streamrec.ingest.kafka_source import consumer_settings

    settings = consumer_settings(config.ingest)
    if arm == "bare-no-crc":
        settings["check_crcs"] = False
    consumer = KafkaConsumer(**settings)
    if arm == "bare-fast":
        kafka_records.install(consumer)
    consumer.subscribe(config.ingest.topics)
    clock = _Clock()
    try:
        while clock.seen < expected:
            polled = consumer.poll(timeout_ms=config.ingest.poll_timeout_ms,
                                   max_records=config.ingest.max_poll_records)
            # (each value touched, as a consumer that uses it would)
            clock.polled(sum(len([m.value for m in messages]) for messages in polled.values()))
        return clock.figures()
    finally:
        consumer.close(autocommit=False)


def _source(config: Any, expected: int) -> dict[str, float]:
    from streamrec.ingest.kafka_source import KafkaSource

    source = KafkaSource(config.ingest)
    clock = _Clock()
    try:
        while clock.seen < expected:
            got = source.poll(config.ingest.max_poll_records,
                              config.ingest.poll_timeout_ms / 1000)
            clock.polled(len(got.events) + len(got.dead_letters))
        return clock.figures()
    finally:
        source.close()


def _train(arm: str, config: Any, expected: int) -> dict[str, float]:
    """``run_training`` with its source class wrapped to time the polls and stop at the end."""
    import streamrec.cli.train as train
    from streamrec.ingest import file_source, kafka_source

    # (trainer.pipeline imports the source class from its module when it builds one)
    module: Any = file_source if arm == "train-file" else kafka_source
    base = module.FileSource if arm == "train-file" else module.KafkaSource
    stop = threading.Event()
    clock = _Clock()

    class Timed(base):  # type: ignore[misc, valid-type]
        def poll(self, max_events: int, timeout_s: float) -> Any:
            got = super().poll(max_events, timeout_s)
            clock.polled(len(got.events) + len(got.dead_letters))
            if clock.seen >= expected:
                stop.set()  # (Kafka never ends; the file ends by itself)
            return got

    setattr(module, base.__name__, Timed)
    stats = train.run_training(config, stop)
    return {**clock.figures(), "examples": stats.examples}


def _replay(broker: str, topic: str, path: str) -> dict[str, float]:
    from streamrec.ingest.replay import replay

    cpu = time.process_time()
    stats = replay(path, topic, [broker], progress=False)
    assert stats.failed == 0, stats
    # (its seconds start with the producer connected, as the other producers')
    return {"events": stats.sent, "seconds": stats.seconds,
            "cpu_seconds": time.process_time() - cpu}


def _replay_kafkaproducer(broker: str, topic: str, path: str) -> dict[str, float]:
    """The path replay took before the batch producer, as it was."""
    from kafka import KafkaProducer
    from kafka.partitioner.default import DefaultPartitioner

    from streamrec.ingest.batch_producer import KeyPartitioner
    from streamrec.ingest.decode import encode_json
    from streamrec.ingest.file_source import FileSource

    class Partitioner(DefaultPartitioner):  # type: ignore[misc]
        """murmur2 of each user's key once, as replay's partitioner was."""

        ours: KeyPartitioner | None = None

        def partition(self, topic: str, key: Any, serialized_key: bytes, value: Any,
                      serialized_value: Any, cluster: Any) -> int:
            if self.ours is None:
                self.ours = KeyPartitioner(cluster.partitions_for_topic(topic))
            return self.ours([serialized_key], -1)[0]

    producer = KafkaProducer(bootstrap_servers=[broker], partitioner=Partitioner(), acks="all",
                             linger_ms=50, batch_size=1 << 20, compression_type=None)
    source = FileSource(path)
    sent = 0
    clock, cpu = time.perf_counter(), time.process_time()
    while not source.exhausted:
        events = source.poll(1000, 0).events
        records = [(str(e.user_id).encode(), encode_json(e)) for e in events]
        for key, value in records:
            producer.send(topic, key=key, value=value)
        sent += len(records)
    producer.flush()
    figures = {"events": sent, "seconds": time.perf_counter() - clock,
               "cpu_seconds": time.process_time() - cpu}
    producer.close()
    return figures


def _produce_prebuilt(broker: str, topic: str, path: str) -> dict[str, float]:
    """Record batches built beforehand (~1 MiB, as the batch producer's), then sent
    with one Produce request in flight: what the broker takes, with little client work."""
    from kafka.net.compat import KafkaNetClient
    from kafka.protocol.producer import ProduceRequest
    from kafka.structs import TopicPartition

    from streamrec.ingest.record_batch import encode_batch

    lines = Path(path).read_bytes().splitlines()
    per = max(1, (1 << 20) // (sum(map(len, lines[:1000])) // min(1000, len(lines)) + 30))
    now = int(time.time() * 1000)
    batches = [encode_batch([None] * len(lines[i:i + per]), lines[i:i + per], now)
               for i in range(0, len(lines), per)]
    client = KafkaNetClient(bootstrap_servers=[broker], client_id="bench-prebuilt")
    try:
        client.check_version(timeout_ms=30_000)
        future = client.cluster.add_topic(topic)
        client.poll(timeout_ms=30_000, future=future)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, 0))
        client.await_ready(leader)
        topic_data, partition_data = ProduceRequest.TopicProduceData, \
            ProduceRequest.TopicProduceData.PartitionProduceData
        clock, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            response = client.send_and_receive(leader, ProduceRequest(
                transactional_id=None, acks=-1, timeout_ms=30_000, topic_data=[topic_data(
                    name=topic, partition_data=[partition_data(index=0, records=batch)])]))
            code = response.responses[0].partition_responses[0].error_code
            assert code == 0, f"Produce answered error {code}"
        return {"events": len(lines), "seconds": time.perf_counter() - clock,
                "cpu_seconds": time.process_time() - cpu}
    finally:
        client.close()


def run_arm(arm: str, broker: str, topic: str, path: str, expected: int) -> dict[str, float]:
    """Run ``arm`` in this process; events (after the first poll) and seconds."""
    from streamrec.runtime import tune_gc

    tune_gc()  # what the streamrec commands do at start: every arm alike
    if arm in PRODUCERS:
        return {"replay": _replay, "replay-kafkaproducer": _replay_kafkaproducer,
                "produce-prebuilt": _produce_prebuilt}[arm](broker, topic, path)
    if arm == "bare-pure-crc":  # kafka-python without the crc32c C extension
        sys.modules["crc32c"] = None  # type: ignore[assignment]
        arm = "bare"
    config = _config(arm, broker, topic, path)
    if arm.startswith("bare"):
        return _bare(arm, config, expected)
    if arm == "source":
        return _source(config, expected)
    return _train(arm, config, expected)


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


RATIOS = [
    ("train-kafka / bare (goal >= 0.9)", "train-kafka", "bare"),
    ("train-kafka / train-file (goal >= 0.8)", "train-kafka", "train-file"),
    ("replay / train-kafka (goal >= 1)", "replay", "train-kafka"),
    ("replay / replay-kafkaproducer (the batch producer)", "replay", "replay-kafkaproducer"),
    ("produce-prebuilt / replay (the broker's limit)", "produce-prebuilt", "replay"),
    ("train-kafka / bare-fast (what training adds to reading)", "train-kafka", "bare-fast"),
    ("bare-fast / bare (ingest.kafka_records)", "bare-fast", "bare"),
    ("bare / bare-no-crc (CRC checks)", "bare", "bare-no-crc"),
    ("bare-pure-crc / bare (without the crc32c extension)", "bare-pure-crc", "bare"),
]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3,
                   help="each round produces a topic and runs every arm on it, in turn")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"consumers, of {', '.join(ARMS)}, bare-pure-crc")
    p.add_argument("--producers", default=",".join(PRODUCERS),
                   help=f"of {', '.join(PRODUCERS)}; replay always runs (it fills the "
                        "consumers' topic)")
    p.add_argument("--result", default="kafka_path",
                   help="the name of the JSON file under benchmarks/results (default: kafka_path)")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # run one arm here (child process)
    p.add_argument("--broker", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.broker, args.topic, args.file, args.expected)))
        return 0

    from streamrec.ingest.kafka_source import create_topics
    from streamrec.synthetic import PRESETS, write_jsonl
    from tests.integration.conftest import start_broker

    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, start_broker() as (broker, _):
        path = str(Path(tmp) / "events.jsonl")
        write_jsonl(path, args.events, PRESETS["drifting"]())
        producers = ["replay", *(a for a in args.producers.split(",") if a != "replay")]
        for r in range(args.rounds):
            topic = f"bench-events-{r}"
            for arm in producers:  # each into its own topic; the consumers read replay's
                produced_to = topic if arm == "replay" else f"bench-{arm}-{r}"
                create_topics(broker, [produced_to], partitions=args.partitions)
                print(f"round {r + 1}: {arm}", file=sys.stderr, flush=True)
                runs.setdefault(arm, []).append(_child(
                    ["-m", "benchmarks.kafka_path", "--arm", arm, "--broker", broker,
                     "--topic", produced_to, "--file", path, "--expected", "0"]))
            produced = {"sent": runs["replay"][-1]["events"]}
            for arm in args.arms.split(","):
                print(f"round {r + 1}: {arm}", file=sys.stderr, flush=True)
                runs.setdefault(arm, []).append(_child(
                    ["-m", "benchmarks.kafka_path", "--arm", arm, "--broker", broker,
                     "--topic", topic, "--file", path, "--expected", str(produced["sent"])]))
    arms: dict[str, dict[str, Any]] = {}
    for arm, figs in runs.items():
        for fig in figs:
            fig["events_per_s"] = fig["events"] / fig["seconds"]
            if "cpu_seconds" in fig:
                fig["cpu_us_per_event"] = fig["cpu_seconds"] / fig["events"] * 1e6
        arms[arm] = {"median_events_per_s": _median([f["events_per_s"] for f in figs]),
                     "runs": figs}
        if "cpu_seconds" in figs[0]:
            arms[arm]["median_cpu_us_per_event"] = _median(
                [f["cpu_us_per_event"] for f in figs])
    print(f"\n{args.events:,} JSONL events (drifting stream), {args.partitions} partition(s), "
          f"Tansu broker, torch threads 1, median of {args.rounds} rounds")
    print(format_table(
        ["arm", "events/s", "CPU us/event", "events/s per round"],
        [[arm, a["median_events_per_s"], a.get("median_cpu_us_per_event", "-"),
          " ".join(f"{f['events_per_s']:,.0f}" for f in a["runs"])] for arm, a in arms.items()]))
    speed = {arm: a["median_events_per_s"] for arm, a in arms.items()}
    cpu = {arm: a["median_cpu_us_per_event"] for arm, a in arms.items()
           if "median_cpu_us_per_event" in a}
    ratios: dict[str, float] = {}
    cpu_ratios: dict[str, float] = {}
    for name, num, den in RATIOS:
        if num in speed and den in speed:
            ratios[name] = speed[num] / speed[den]
        if num in cpu and den in cpu:  # events per CPU second
            cpu_ratios[name] = cpu[den] / cpu[num]
    print(format_table(["ratio of medians", "events/s", "per CPU second"],
                       [[k, round(v, 3), round(cpu_ratios[k], 3) if k in cpu_ratios else "-"]
                        for k, v in ratios.items()]))
    write_result(args.result, {"args": {k: v for k, v in vars(args).items() if v is not None},
                                "arms": arms, "ratios": ratios,
                                "ratios_per_cpu_second": cpu_ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freshness: from an event produced into Kafka until a replica's Predict reflects it.

A real Kafka-protocol broker (Tansu), a ``streamrec train`` process reading its
topic and pushing to a ``streamrec serve`` process, and a producer sending the
default synthetic stream at a fixed rate (labeled examples: no join window in
the way). Once a second the producer also sends a probe: three examples of a
never-seen user and item, clicked. A poller then asks the replica, every few
milliseconds, for that user's scores of the probe item and of another item
never seen: equal until the probe's rows have been learned and pushed. The
time from the probe's send to the first Predict that tells them apart is its
freshness.

Arms, side by side on the same broker and streams:

- ``default``      a push after each training step (at most every
                   ``sync.min_interval_s`` = 0.1 s), a partial batch trained after
                   ``trainer.max_batch_delay_s`` = 0.2 s;
- ``one-second``   a push at most every second and partial batches after 1 s
                   (``sync.min_interval_s=1``, ``trainer.max_batch_delay_s=1``).

    python -m benchmarks.freshness            # ~3 min
    python -m benchmarks.freshness --quick
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.report import format_table, quantile, write_result
from benchmarks.serving_latency import ROOT, TOKEN, _free_port, _wait_ready

ARMS = {
    "default": [],
    "one-second": ["--set", "sync.min_interval_s=1", "--set", "trainer.max_batch_delay_s=1"],
}
PROBE_COPIES = 3  # past the default frequency filter (min_count = 2)


def _encoded_stream(count: int, seed: int) -> list[bytes]:
    import dataclasses

    from streamrec.ingest.decode import encode_json
    from streamrec.synthetic import SyntheticStream, default

    config = dataclasses.replace(default(), seed=seed)
    return [encode_json(e) for e in SyntheticStream(config).events(count)]


def _probe(n: int) -> tuple[int, int, bytes]:
    from streamrec.ingest.decode import encode_json
    from streamrec.ingest.event import EXAMPLE, Event

    user, item = 10**15 + n, 2 * 10**15 + n
    event = Event(EXAMPLE, user, item, int(time.time() * 1000), label=1.0)
    return user, item, encode_json(event)


def _measure(address: str, bootstrap: str, topic: str, rate: float, probes: int,
             background: list[bytes]) -> tuple[list[float], float]:
    """Produce ``background`` at ``rate`` events/s with a probe every second:
    ``(probe latencies, the background rate achieved)``."""
    from kafka import KafkaProducer

    from streamrec.client import RecommenderClient

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1,
                             batch_size=1 << 18)
    stop = threading.Event()
    sent_total = [0, 0.0]  # events, seconds

    def produce() -> None:
        tick, per_tick = 0.01, rate * 0.01
        owed, t0, events = 0.0, time.perf_counter(), itertools.cycle(background)
        start = t0
        while not stop.is_set():
            owed += per_tick
            for _ in range(int(owed)):
                producer.send(topic, next(events))
            sent_total[0] += int(owed)
            sent_total[1] = time.perf_counter() - start
            owed -= int(owed)
            t0 += tick
            time.sleep(max(0.0, t0 - time.perf_counter()))

    sender = threading.Thread(target=produce, daemon=True)
    sender.start()
    latencies = []
    try:
        with RecommenderClient(address, timeout_s=5) as client:
            time.sleep(3)  # the background stream reaches the trainer first
            for n in range(probes):
                user, item, value = _probe(n)
                unseen = 3 * 10**15 + n
                sent = time.perf_counter()
                for _ in range(PROBE_COPIES):
                    producer.send(topic, value)
                producer.flush()
                while time.perf_counter() - sent < 30:
                    scores = client.predict(user_id=user, item_ids=[item, unseen]).scores
                    if abs(scores[0] - scores[1]) > 1e-7:
                        latencies.append(time.perf_counter() - sent)
                        break
                    time.sleep(0.005)
                else:
                    print(f"probe {n} not reflected within 30 s", file=sys.stderr)
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - sent)))
    finally:
        stop.set()
        sender.join()
        producer.close()
    return latencies, sent_total[0] / max(sent_total[1], 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer probes")
    p.add_argument("--rates", default="100,5000", help="background events/s (comma list)")
    p.add_argument("--probes", type=int, default=20, help="probes per arm and rate")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.probes = 5

    from tests.integration.conftest import start_broker

    from streamrec.ingest.kafka_source import create_topics

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    background = _encoded_stream(20_000, args.seed)
    results: dict[str, dict[str, Any]] = {}
    with start_broker() as (bootstrap, _), tempfile.TemporaryDirectory(prefix="fresh_") as tmp:
        for arm, rate in itertools.product(args.arms.split(","),
                                           [float(r) for r in args.rates.split(",")]):
            topic = f"events-{arm}-{int(rate)}"
            create_topics(bootstrap, [topic])
            port, sync_port = _free_port(), _free_port()
            common = ["--set", "metrics.port=-1", "--set", f"serving.token={TOKEN}",
                      "--set", f"sync.token={TOKEN}"]
            log = open(Path(tmp) / f"{topic}.log", "wb")
            procs = [
                subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve", *common,
                                  "--set", f"serving.port={port}",
                                  "--set", f"serving.sync_port={sync_port}"],
                                 cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                subprocess.Popen([sys.executable, "-m", "streamrec.cli", "train", *common,
                                  "--set", f"ingest.bootstrap_servers={bootstrap}",
                                  "--set", f"ingest.topics={topic}",
                                  "--set", f"ingest.group_id=fresh-{topic}",
                                  "--set", f"sync.replicas=127.0.0.1:{sync_port}",
                                  "--set", "trainer.threads=1", *ARMS[arm]],
                                 cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)]
            try:
                address = f"127.0.0.1:{port}"
                _wait_ready(address, deadline_s=120)
                print(f"{arm} at {rate:.0f} events/s ...", file=sys.stderr, flush=True)
                seconds, achieved = _measure(address, bootstrap, topic, rate, args.probes,
                                             background)
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(60)
                log.close()
            results[f"{arm}@{int(rate)}"] = {
                "arm": arm, "rate": rate, "produced_per_s": achieved, "probes": args.probes,
                "reflected": len(seconds),
                "p50_s": quantile(seconds, 0.5) if seconds else None,
                "p99_s": quantile(seconds, 0.99) if seconds else None,
                "max_s": max(seconds) if seconds else None}

    rows = [[r["arm"], r["rate"], r["produced_per_s"], f"{r['reflected']}/{r['probes']}",
             r["p50_s"], r["p99_s"], r["max_s"]] for r in results.values()]
    print("\nFreshness, produced to served (s): a probe every second over a background "
          "stream; one torch thread in the trainer")
    print(format_table(["arm", "events/s", "produced/s", "reflected", "p50 s", "p99 s",
                        "max s"], rows))
    path = write_result("freshness" + ("_quick" if args.quick else ""),
                        {"args": vars(args), "threads": 1, "arms": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`streamrec train` as 1 process against 2 ranks under torchrun, on the same pre-filled topic.

One run starts a Tansu broker (the integration tests' ``start_broker``), writes
the ``drifting`` synthetic stream (labelled examples, fixed seed) into a topic
of ``--partitions`` partitions with ``streamrec replay``, then per round runs
each arm on that topic from its start, in its own consumer group and checkpoint
directory, one torch thread per process:

- ``1-rank``   ``streamrec train`` (one process);
- ``2-ranks``  ``torchrun --nproc-per-node 2 -m streamrec.cli train``, each rank
               reading half of the partitions; ``trainer.batch_size`` is the
               global batch in both arms.

Events/s comes from the learned-offsets ledgers (one per rank): the examples of
the checkpoints after the first one, over the time between the first and the
last checkpoint that took in records (start-up and the group join are not
throughput), and per CPU second of the trainer processes over the same span
(sampled from /proc every 0.2 s: on a shared machine it varies less than
events/s, and shows what the ranks' collectives cost). Progressive AUC and logloss are the final checkpoints' test-then-
train figures, summed over the ranks. Reported: medians of the rounds per arm
and their ratio, 2 ranks over 1.

    python -m benchmarks.ranks                        # 200k events, 3 rounds
    python -m benchmarks.ranks --events 40000 --rounds 1
    python -m benchmarks.ranks --batch-size 16384 --out ranks_batch16k
    python -m benchmarks.ranks --history-features user_id,item_id --out ranks_history
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import format_table, write_result

ARMS = {"1-rank": 1, "2-ranks": 2}
SETTINGS = """
[model]
sparse_features = ["user_id", "item_id", "category", "country", "hour"]
dense_features = ["price"]
history_features = {history}

[trainer]
checkpoint_interval_s = 1.0
log_interval_s = 3600
threads = 1

[metrics]
port = -1
"""


def _config(directory: Path, broker: str, topic: str, arm: str, batch_size: int,
            history: list[str]) -> Path:
    path = directory / f"{arm}.toml"
    path.write_text(f"""
[ingest]
source = "kafka"
bootstrap_servers = ["{broker}"]
topics = ["{topic}"]
group_id = "bench-{topic}-{directory.name}-{arm}"
{SETTINGS.replace('{history}', json.dumps(history)).replace('[trainer]', f'[trainer]{chr(10)}checkpoint_dir = "{directory / arm}"'
                                f'{chr(10)}batch_size = {batch_size}')}
""")
    return path


def _ledgers(directory: Path, ranks: int) -> list[list[dict[str, Any]]]:
    from streamrec.trainer.ledger import read_ledger

    dirs = [directory] if ranks == 1 else [directory / f"rank{r}" for r in range(ranks)]
    return [read_ledger(d) for d in dirs]


def _learned(ledgers: list[list[dict[str, Any]]]) -> int:
    return sum(s["records"] for lines in ledgers for line in lines for s in line["spans"])


def run_arm(directory: Path, broker: str, topic: str, arm: str, events: int,
            batch_size: int, history: list[str]) -> dict[str, float]:
    ranks = ARMS[arm]
    cfg = _config(directory, broker, topic, arm, batch_size, history)
    cli = ["-m", "streamrec.cli", "train", "--config", str(cfg)]
    launcher = [] if ranks == 1 else [
        "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = directory / arm
    with open(directory / f"{arm}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, *launcher, *cli], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        cpu: list[tuple[float, float]] = []  # (wall time, CPU seconds of the trainers)
        try:
            while _learned(_ledgers(ckpt, ranks)) < events if ckpt.exists() else True:
                if proc.poll() is not None:
                    tail = (directory / f"{arm}.log").read_text(errors="replace")[-6000:]
                    raise RuntimeError(f"{arm} exited with {proc.returncode}:\n{tail}")
                cpu.append((time.time(), _cpu_seconds(proc.pid, ranks)))
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(120)
    ledgers = _ledgers(ckpt, ranks)
    lines = sorted((line for rank in ledgers for line in rank if line["spans"]),
                   key=lambda line: line["written_at"])
    first, rest = lines[0], lines[1:]
    seconds = rest[-1]["written_at"] - first["written_at"]
    timed = sum(s["records"] for line in rest for s in line["spans"])
    dirs = [ckpt] if ranks == 1 else [ckpt / f"rank{r}" for r in range(ranks)]
    progress = [torch.load(max(d.glob("ckpt-*.pt")), weights_only=True)["state"]["progress"]
                for d in dirs]
    used = _at(cpu, rest[-1]["written_at"]) - _at(cpu, first["written_at"])
    return {"events": timed, "seconds": seconds, "events_per_s": timed / seconds,
            "cpu_seconds": used, "events_per_cpu_s": timed / used, **_quality(progress)}


def _cpu_seconds(pid: int, ranks: int) -> float:
    """User + system CPU seconds of the trainer processes (torchrun's children, or ``pid``)."""
    pids = [pid] if ranks == 1 else [
        int(c) for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _at(samples: list[tuple[float, float]], when: float) -> float:
    """The CPU seconds sampled last at or before ``when``."""
    before = [c for t, c in samples if t <= when]
    return before[-1] if before else samples[0][1]


def _quality(progress: list[dict[str, Any]]) -> dict[str, float]:
    """AUC and logloss over every rank's test-then-train examples."""
    from streamrec.trainer.progressive import ProgressiveMetrics

    merged = ProgressiveMetrics(window=1)
    state = dict(progress[0])
    for other in progress[1:]:
        for key in ("pos_hist", "neg_hist", "logloss_sum", "weight_sum", "predicted_sum",
                    "clicked_sum", "examples", "positives"):
            state[key] = state[key] + other[key]
    state["recent"] = torch.zeros((3, 0), dtype=torch.float64)
    merged.load_state_dict(state)
    return {"auc": merged.auc, "logloss": merged.logloss, "examples": merged.examples}


def _free_port() -> int:
    from tests.integration.processes import free_port

    return free_port()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3,
                   help="each round runs every arm on the topic, in turn")
    p.add_argument("--batch-size", type=int, default=4096,
                   help="trainer.batch_size, the global batch in both arms")
    p.add_argument("--history-features", default="",
                   help="model.history_features, comma-separated (default: none)")
    p.add_argument("--out", default="ranks", help="results/<out>.json")
    args = p.parse_args(argv)
    history = [f for f in args.history_features.split(",") if f]

    from streamrec.ingest.kafka_source import create_topics
    from streamrec.synthetic import PRESETS, write_jsonl
    from tests.integration.conftest import start_broker

    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp, start_broker() as (broker, _):
        path = Path(tmp) / "events.jsonl"
        write_jsonl(path, args.events, PRESETS["drifting"]())
        topic = "bench-ranks"
        create_topics(broker, [topic], partitions=args.partitions)
        subprocess.run([sys.executable, "-m", "streamrec.cli", "replay", str(path), "--topic",
                        topic, "--bootstrap-servers", broker, "--quiet"], check=True)
        for r in range(args.rounds):
            for arm in ARMS:
                print(f"round {r + 1}: {arm}", file=sys.stderr, flush=True)
                directory = Path(tmp) / f"round{r}"
                directory.mkdir(exist_ok=True)
                runs[arm].append(run_arm(directory, broker, topic, arm, args.events,
                                         args.batch_size, history))
                print(f"  {runs[arm][-1]}", file=sys.stderr, flush=True)
    arms = {arm: {"median_events_per_s": statistics.median(f["events_per_s"] for f in figs),
                  "median_events_per_cpu_s": statistics.median(f["events_per_cpu_s"]
                                                               for f in figs),
                  "median_auc": statistics.median(f["auc"] for f in figs),
                  "median_logloss": statistics.median(f["logloss"] for f in figs),
                  "runs": figs} for arm, figs in runs.items()}
    print(f"\n{args.events:,} events (drifting stream), {args.partitions} partitions, batch "
          f"{args.batch_size}, history features {history or 'none'}, Tansu "
          f"broker, one torch thread per process, median of {args.rounds} rounds")
    print(format_table(["arm", "events/s", "events/CPU s", "progressive AUC", "logloss",
                        "events/s per round"],
                       [[arm, a["median_events_per_s"], a["median_events_per_cpu_s"],
                         round(a["median_auc"], 4),
                         round(a["median_logloss"], 4),
                         " ".join(f"{f['events_per_s']:,.0f}" for f in a["runs"])]
                        for arm, a in arms.items()]))
    one, two = arms["1-rank"], arms["2-ranks"]
    ratios = {"events_per_s_2_over_1": two["median_events_per_s"] / one["median_events_per_s"],
              "events_per_cpu_s_2_over_1": two["median_events_per_cpu_s"]
              / one["median_events_per_cpu_s"],
              "auc_2_minus_1": two["median_auc"] - one["median_auc"]}
    print(format_table(["2 ranks vs 1", "value"], [[k, round(v, 4)] for k, v in ratios.items()]))
    write_result(args.out, {"args": vars(args), "arms": arms, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())

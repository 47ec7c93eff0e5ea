"""Delayed feedback on any log: the same stream labeled and in production form, side by side.

Give the log twice, as JSONL event files: labeled (``example`` events) and in
production form (an ``impression`` per example, with the example's
``event_id``, and ``click`` events; ``streamrec generate --form joined``
writes one). Arms, all on the default config with ``--set`` overrides:

- ``labeled``        test-then-train on the labeled form (what ``evaluate`` reports for it);
- ``served``         the labeled form scored on arrival, then learned (labels known at once);
- ``wait``, ``fake_negative``, ``fake_negative-3s``  the production form through the
                     joiner with that ``ingest.delayed_feedback``, scored on arrival.

Reported per arm: AUC, logloss, calibration after the first 20%, and the
freshness of each mode: how late an example is learned after its impression,
in event-time seconds and in events of the stream (median and p90 over the
examples; the training batch's wait comes on top); and what each form and mode
costs through ``streamrec evaluate`` (JSON decoding included): impressions per
second against the labeled file's examples per second, best of ``--repeat``
interleaved runs. Writes results/<--out>.json.

    streamrec generate prod_labeled.jsonl --events 60000 --preset production
    streamrec generate prod_joined.jsonl --events 60000 --preset production --form joined
    python -m benchmarks.delayed_feedback --labeled prod_labeled.jsonl \\
        --joined prod_joined.jsonl --set ingest.join_window_s=60 \\
        --set model.sparse_features=user_id,item_id,category,country,hour,tags \\
        --set model.dense_features=price --out delayed_feedback_production

results/delayed_feedback_ml100k.json: MovieLens 100K as the real-log benchmark
reads it (``benchmarks/real_data.py``: ``labeled_events``, each event_id set to
its impression's ``i<n>``, and ``production_events``), the labeled form
relabeled as a 300 s join decides (164 of 100k clicks come later), with
``--set model.sparse_features=user_id,item_id,age,gender,occupation,zip,year,genres``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks import joined
from benchmarks.quality import figures, online
from benchmarks.report import format_table, write_result
from streamrec.ingest.batch import Batcher
from streamrec.ingest.decode import decode_json
from streamrec.ingest.event import Event
from streamrec.ingest.joiner import Joiner
from streamrec.config import load_config
from streamrec.cli.evaluate import evaluate
from streamrec.trainer.trainer import OnlineTrainer


def read(path: str) -> list[Event]:
    with open(path, "rb") as f:
        return [decode_json(line) for line in f if line.strip()]


def freshness(production: list[Event], window_s: float, mode: str, elapsed_s: float
              ) -> dict[str, float]:
    """How late each example is learned: event-time seconds and events from its impression.

    Medians and 90th percentiles over the examples the joiner emits, each
    stamped with the event that released it (the stream pushed one event at a
    time; the training batch adds its own wait on top).
    """
    j = Joiner(["click", "like", "share", "purchase"], window_s, delayed_feedback=mode,
               elapsed_s=elapsed_s)
    shown = {e.event_id: (e.timestamp_ms, n) for n, e in enumerate(production)
             if e.type == "impression"}
    seconds, events = [], []
    for n, event in enumerate(production):
        for example in j.push([event]):
            at, index = shown[example.event_id]
            seconds.append((event.timestamp_ms - at) / 1000)
            events.append(n - index)
    end = production[-1].timestamp_ms + int(window_s * 1000)  # the window after the end
    for example in j.flush():
        at, index = shown[example.event_id]
        seconds.append((end - at) / 1000)
        events.append(len(production) - index)
    return {"freshness_median_s": statistics.median(seconds),
            "freshness_p90_s": statistics.quantiles(seconds, n=10)[-1],
            "freshness_median_events": statistics.median(events),
            "freshness_p90_events": statistics.quantiles(events, n=10)[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labeled", required=True)
    p.add_argument("--joined", required=True)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="interleaved evaluate runs per arm")
    p.add_argument("--out", default="delayed_feedback")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = dict(item.partition("=")[::2] for item in args.set)
    labeled, production = read(args.labeled), read(args.joined)
    labels = torch.tensor([e.label or 0.0 for e in labeled], dtype=torch.float64)
    window = load_config(env={}, overrides=overrides).ingest.join_window_s

    def config(**more: str) -> Any:
        return load_config(env={}, overrides={**overrides, **more, "trainer.threads": "0"})

    def learn_labeled() -> tuple[list[float], float]:
        c = config()
        t = OnlineTrainer.from_config(c)
        b = Batcher(c.model.sparse_features, c.model.dense_features)
        started = time.perf_counter()
        probs = online(labeled, t, b)
        return probs, time.perf_counter() - started

    arms = {
        "labeled": learn_labeled,
        "served": lambda: joined.served(labeled, config()),
        "wait": lambda: joined.joined(labeled, production,
                                      config(**{"ingest.delayed_feedback": "wait"})),
        "fake_negative": lambda: joined.joined(labeled, production, config(**{
            "ingest.delayed_feedback": "fake_negative"})),
        "fake_negative-3s": lambda: joined.joined(labeled, production, config(**{
            "ingest.delayed_feedback": "fake_negative", "ingest.fake_negative_delay_s": "3"})),
    }
    modes = {"wait": ("wait", 0.0), "fake_negative": ("fake_negative", 0.0),
             "fake_negative-3s": ("fake_negative", 3.0)}
    results: dict[str, Any] = {}
    rows = []
    for name, run in arms.items():
        print(f"{name} ...", file=sys.stderr, flush=True)
        probs, seconds = run()
        fig = figures(probs, labels)
        fig["examples_per_s"] = len(labeled) / seconds
        if name in modes:
            fig.update(freshness(production, window, *modes[name]))
        results[name] = fig
        rows.append([name, round(fig["auc"], 4), round(fig["logloss"], 4),
                     round(fig["calibration_after20"], 3),
                     round(fig["auc"] - results["labeled"]["auc"], 4),
                     round(fig["logloss"] - results["labeled"]["logloss"], 4),
                     *(round(fig.get(f"freshness_{k}", 0.0), 1) for k in (
                         "median_s", "p90_s", "median_events", "p90_events")),
                     fig["examples_per_s"]])
    print(format_table(["arm", "AUC", "logloss", "calibration after 20%", "dAUC vs labeled",
                        "dlogloss", "learned after: median s", "p90 s", "median events",
                        "p90 events", "examples/s"], rows))
    speed = evaluate_speed(args, config, len(labeled))
    base = speed["labeled"]
    print(format_table(["evaluate", "impressions/s", "x labeled"],
                       [[name, v, round(v / base, 2)] for name, v in speed.items()]))
    write_result(args.out, {"args": vars(args), "examples": len(labeled), "arms": results,
                            "evaluate_impressions_per_s": speed})
    return 0


def evaluate_speed(args: argparse.Namespace, config: Any, impressions: int) -> dict[str, float]:
    """Impressions (examples) per second through ``evaluate``, best of interleaved runs."""
    runs = {"labeled": (args.labeled, {}),
            "wait": (args.joined, {"ingest.delayed_feedback": "wait"}),
            "fake_negative": (args.joined, {"ingest.delayed_feedback": "fake_negative"})}
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, (path, more) in runs.items():
            print(f"evaluate {name} ...", file=sys.stderr, flush=True)
            seconds = evaluate(config(**more), path, progress=False)["wall_seconds"]
            best[name] = max(best.get(name, 0.0), impressions / seconds)
    return best


if __name__ == "__main__":
    sys.exit(main())

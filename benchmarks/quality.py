"""Model quality on live streams: streamrec vs per-event learners vs offline training.

Every arm sees the same synthetic stream (fixed seed per preset, see
streamrec/synthetic.py for each generator's parameters) with the same
features — user_id, item_id, category, country, hour, tags (a list, on the
production preset) as categorical, log price as numeric — and is scored
test-then-train: each event is predicted before it is learned. Reported:
progressive AUC and logloss over the whole stream and over its last 20%,
calibration (mean predicted / observed click rate) after the first 20%,
events/s, and the Bayes-optimal AUC of the stream (the generator knows every
event's true click probability).

Each stream also runs in production form (an impression per example, a click
at its delay; benchmarks/joined.py): its arms are scored when each impression
arrives, as serving would, and learn as ``ingest.delayed_feedback`` says. The
``joined`` table compares them with the labeled form, test-then-train and
scored at arrival (``streamrec-served``).

Arms:
- ``streamrec``          the default config: an FM (first-order, pairwise interactions and
                         one linear layer over the factors; embedding dim 8) with history
                         features, batch 4096 after a warm-up that starts at 1024 and grows
                         with the examples learned, on the operators of streamrec/native;
- ``streamrec-plain``    the default without history features (plain mini-batch);
- ``streamrec-no-wide``  the default without wide terms;
- ``streamrec-no-warmup`` the default without the warm-up (batch 4096 from the start);
- ``streamrec-b256``     batch 256, no warm-up;
- ``streamrec-deepfm``   the default with hidden layers [64, 32] (DeepFM; its MLP has no
                         C kernel);
- ``river-lr`` / ``river-fm``  River LogisticRegression / FMClassifier, event by event;
- ``offline-frozen``     streamrec trained on the first 80% (``--epochs`` passes, history
                         counts cleared before each pass after the first),
                         then scoring the last 20% frozen;
- ``offline+online``     the same model continuing test-then-train on the last 20%;
- ``item-ctr``           each item's smoothed click rate so far (the floor);
- ``streamrec-served``   the default on the labeled form, each example scored on arrival
                         (served time), then learned;
- ``joined-wait`` / ``joined-fake_negative``  the default on the production form, with that
                         ``ingest.delayed_feedback`` (join window: the generator's);
- ``joined-no-wide``     fake negatives (the default) without wide terms;
- ``joined-fake_negative-3s`` / ``-10s``  fake negatives after 3 s / 10 s
                         (``ingest.fake_negative_delay_s``, ES-DFM's elapsed time); run
                         when named in ``--arms``, as for results/quality_joined.json:

    python -m benchmarks.quality --out quality_joined --arms streamrec,streamrec-served,\
        joined-wait,joined-fake_negative,joined-fake_negative-3s,joined-fake_negative-10s

    python -m benchmarks.quality              # a few minutes (River FM is most of it)
    python -m benchmarks.quality --quick      # ~1 min; 20k events, over half of them in
                                              # the warm-up's small batches: streamrec's
                                              # events/s there is not its steady state

Other configurations run as extra arms, each named and given as config
overrides separated by ``;`` (the sweep recorded in results/quality_sweep.json):

    python -m benchmarks.quality --arms streamrec,river-fm --out quality_sweep \
        --variant "h32:model.hidden=32" --variant "fm-b4096:model.hidden=;trainer.batch_size=4096"
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import joined
from benchmarks.report import format_table, write_result
from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.config import AppConfig, load_config
from streamrec.synthetic import PRESETS, SyntheticConfig, SyntheticStream
from streamrec.trainer.progressive import ProgressiveMetrics, exact_auc
from streamrec.trainer.trainer import OnlineTrainer

FEATURES = "user_id,item_id,category,country,hour,tags"
Scored = tuple[list[float], float]  # (probabilities in stream order, seconds)


@dataclasses.dataclass
class Stream:
    """One synthetic stream: labeled examples, and (made on first use) its production form."""

    config: SyntheticConfig
    events: list[Event]
    _production: list[Event] | None = None

    @property
    def production(self) -> list[Event]:
        if self._production is None:
            self._production = list(SyntheticStream(self.config).joined_events(len(self.events)))
        return self._production


def config_for(batch: int | None, overrides: dict[str, str]) -> AppConfig:
    """The default config with the benchmark's features, ``overrides`` ("model.hidden": "32")
    and, unless they set it, the steady-state ``batch``."""
    settings = {"model.sparse_features": FEATURES, "model.dense_features": "price", **overrides}
    if batch is not None and "trainer.batch_size" not in overrides:
        settings["trainer.batch_size"] = str(batch)
    return load_config(env={}, overrides=settings)


def trainer(batch: int | None, **overrides: str) -> tuple[OnlineTrainer, Batcher]:
    """``overrides``: config fields with ``__`` for ``.`` (``model__hidden="32"``)."""
    config = config_for(batch, {key.replace("__", "."): value for key, value in overrides.items()})
    return OnlineTrainer.from_config(config), Batcher(config.model.sparse_features,
                                                      config.model.dense_features)


def online(events: list[Event], t: OnlineTrainer, b: Batcher) -> list[float]:
    """Test-then-train over ``events`` in the trainer's own batch schedule (as the loop does)."""
    probs: list[float] = []
    start = 0
    while start < len(events):
        size = t.batch_size_now()
        probs += t.train_batch(b.build(events[start:start + size])).probs.tolist()
        start += size
    return probs


def arm_streamrec(events: list[Event], args: argparse.Namespace, batch: int | None = None,
                  **overrides: str) -> Scored:
    """``overrides``: config fields with ``__`` for ``.`` (``model__hidden="32"``)."""
    t, b = trainer(batch if batch is not None else args.batch, **overrides)
    started = time.perf_counter()
    probs = online(events, t, b)
    return probs, time.perf_counter() - started


def arm_offline(events: list[Event], args: argparse.Namespace, continue_online: bool) -> Scored:
    t, b = trainer(args.batch)
    split = int(len(events) * 0.8)
    started = time.perf_counter()
    probs = online(events[:split], t, b)  # epoch 1 (its scores are test-then-train)
    for _ in range(args.epochs - 1):
        # History counts kept from the previous pass would hold each
        # example's own label (leakage the model learns to trust).
        t.clear_history()
        online(events[:split], t, b)
    tail = events[split:]
    if continue_online:
        probs += online(tail, t, b)
    else:
        size = t.batch_size_now()
        for start in range(0, len(tail), size):
            probs += t.predict(b.build(tail[start:start + size])).tolist()
    return probs, time.perf_counter() - started


def arm_served(stream: Stream, args: argparse.Namespace) -> Scored:
    return joined.served(stream.events, config_for(args.batch, {}))


def arm_joined(stream: Stream, args: argparse.Namespace, mode: str, elapsed_s: float = 0.0,
               **overrides: str) -> Scored:
    config = config_for(args.batch, {"ingest.delayed_feedback": mode,
                                     "ingest.fake_negative_delay_s": str(elapsed_s),
                                     "ingest.join_window_s": str(stream.config.join_window_s),
                                     **overrides})
    return joined.joined(stream.events, stream.production, config)


def river_features(e: Event) -> dict[str, float]:
    x = {f"user={e.user_id}": 1.0, f"item={e.item_id}": 1.0}
    for name in ("category", "country", "hour", "tags"):
        for v in e.features.get(name, ()):
            x[f"{name}={v}"] = 1.0
    price = e.features.get("price", (0.0,))[0]
    x["log_price"] = math.log1p(float(price))
    return x


def arm_river(events: list[Event], args: argparse.Namespace, kind: str) -> Scored:
    from river import facto, linear_model, optim

    if kind == "lr":
        model: Any = linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
    else:
        model = facto.FMClassifier(n_factors=8, seed=args.seed)
    probs = []
    started = time.perf_counter()
    for e in events:
        x = river_features(e)
        probs.append(model.predict_proba_one(x).get(True, 0.5))
        model.learn_one(x, bool(e.label))
    return probs, time.perf_counter() - started


def arm_item_ctr(events: list[Event], args: argparse.Namespace) -> Scored:
    counts: dict[int, list[float]] = {}
    clicks = seen = 0.0
    probs = []
    started = time.perf_counter()
    for e in events:
        prior = (clicks + 1) / (seen + 10)
        n, c = counts.get(e.item_id, (0.0, 0.0))
        probs.append((c + 10 * prior) / (n + 10))
        counts[e.item_id] = [n + 1, c + (e.label or 0.0)]
        seen += 1
        clicks += e.label or 0.0
    return probs, time.perf_counter() - started


ARMS: dict[str, Callable[[Stream, argparse.Namespace], Scored]] = {
    "streamrec": lambda s, a: arm_streamrec(s.events, a),
    "streamrec-plain": lambda s, a: arm_streamrec(s.events, a, model__history_features=""),
    "streamrec-no-wide": lambda s, a: arm_streamrec(s.events, a, model__wide_terms=""),
    "streamrec-no-warmup": lambda s, a: arm_streamrec(s.events, a,
                                                      trainer__warmup_batch_size="0"),
    "streamrec-b256": lambda s, a: arm_streamrec(s.events, a, batch=256,
                                                 trainer__warmup_batch_size="0"),
    "streamrec-deepfm": lambda s, a: arm_streamrec(s.events, a, model__hidden="64,32"),
    "river-lr": lambda s, a: arm_river(s.events, a, "lr"),
    "river-fm": lambda s, a: arm_river(s.events, a, "fm"),
    "offline-frozen": lambda s, a: arm_offline(s.events, a, continue_online=False),
    "offline+online": lambda s, a: arm_offline(s.events, a, continue_online=True),
    "item-ctr": lambda s, a: arm_item_ctr(s.events, a),
    "streamrec-served": arm_served,
    "joined-wait": lambda s, a: arm_joined(s, a, "wait"),
    "joined-fake_negative": lambda s, a: arm_joined(s, a, "fake_negative"),
    "joined-no-wide": lambda s, a: arm_joined(s, a, "fake_negative",
                                              **{"model.wide_terms": ""}),
    "joined-fake_negative-3s": lambda s, a: arm_joined(s, a, "fake_negative", 3.0),
    "joined-fake_negative-10s": lambda s, a: arm_joined(s, a, "fake_negative", 10.0),
}
# Run when named in --arms only (the sweep of fake_negative_delay_s).
EXTRA_ARMS = ("joined-fake_negative-3s", "joined-fake_negative-10s")
# Arms scored at serving time, compared in the "joined" table.
SERVED_ARMS = ("streamrec-served", "joined-wait", "joined-fake_negative", "joined-no-wide",
               "joined-fake_negative-3s", "joined-fake_negative-10s")


def variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:key=value;key=value`` -> (NAME, config overrides); ValueError if malformed."""
    name, sep, settings = spec.partition(":")
    pairs = [item.partition("=") for item in settings.split(";") if item.strip()]
    if not sep or not name or any(not key.strip() or not eq for key, eq, _ in pairs):
        raise ValueError(f"--variant {spec!r}: expected NAME:key=value[;key=value...], "
                         "e.g. fm:model.hidden=")
    return name, {key.strip(): value.strip() for key, _, value in pairs}


def variant_arm(overrides: dict[str, str]) -> Callable[[Stream, argparse.Namespace], Scored]:
    return lambda s, a: arm_streamrec(
        s.events, a, **{key.replace(".", "__"): value for key, value in overrides.items()})


def figures(probs: list[float], labels: torch.Tensor) -> dict[str, float]:
    p = torch.tensor(probs, dtype=torch.float64)
    tail = int(len(probs) * 0.8)
    out = {}
    for name, sl in (("", slice(None)), ("_last20", slice(tail, None))):
        m = ProgressiveMetrics(window=1)
        m.update(p[sl], labels[sl])
        out["auc" + name] = m.auc
        out["logloss" + name] = m.logloss
    warm = ProgressiveMetrics(window=1)  # after warm-up: past the first 20%
    warm.update(p[len(probs) // 5:], labels[len(probs) // 5:])
    out["calibration_after20"] = warm.calibration
    return out


def joined_rows(per_arm: dict[str, dict[str, float]]) -> list[list[Any]]:
    """Each served-time arm against the labeled form: test-then-train, and served."""
    rows = []
    for arm in SERVED_ARMS:
        if arm not in per_arm:
            continue
        fig = per_arm[arm]
        row: list[Any] = [arm, round(fig["auc"], 4), round(fig["logloss"], 4),
                          round(fig["calibration_after20"], 3)]
        for ref in ("streamrec", "streamrec-served"):
            base = per_arm.get(ref)
            row += [round(fig["auc"] - base["auc"], 4), round(fig["logloss"] - base["logloss"], 4)
                    ] if base else ["-", "-"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20k events per stream")
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--presets", default="drifting,bursty_new_users,popularity_churn,"
                                        "dense_vs_sparse_users,production")
    p.add_argument("--arms", default=",".join(a for a in ARMS if a not in EXTRA_ARMS))
    p.add_argument("--batch", type=int, default=None,
                   help="steady-state batch of the streamrec arms (default: the config's)")
    p.add_argument("--epochs", type=int, default=3, help="offline passes over the first 80%%")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[],
                   metavar="NAME:key=value;...",
                   help="an extra streamrec arm with these config overrides (repeatable)")
    p.add_argument("--out", default="quality", help="result file name under results/")
    args = p.parse_args(argv)
    if args.quick:
        args.events = 20_000
    torch.set_num_threads(args.threads)
    arms = dict(ARMS)
    names = args.arms.split(",")
    for spec in args.variant:
        try:
            name, overrides = variant(spec)
            # The config the arm will run with: a bad key or value fails now, not mid-run.
            config_for(args.batch, overrides)
        except ValueError as e:  # (ConfigError is one)
            p.error(str(e))
        if name in arms:
            p.error(f"--variant {spec!r}: an arm named {name!r} exists already")
        arms[name] = variant_arm(overrides)
        names.append(name)
    unknown = [name for name in names if name not in arms]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(arms)}")
    results: dict[str, Any] = {}
    for preset in args.presets.split(","):
        synthetic = PRESETS[preset]()
        pairs = list(SyntheticStream(synthetic).events_with_truth(args.events))
        events = [e for e, _ in pairs]
        stream = Stream(synthetic, events)
        labels = torch.tensor([e.label or 0.0 for e in events], dtype=torch.float64)
        oracle = exact_auc(torch.tensor([q for _, q in pairs]), labels)
        # The stream's ~10^6 objects are the benchmark's input, not any arm's
        # work: frozen out of the collector, they no longer make whichever arm
        # triggers a full collection pay ~0.2 s for scanning them.
        gc.collect()
        gc.freeze()
        rows, per_arm = [], {}
        for arm in names:
            print(f"{preset}: {arm} ...", file=sys.stderr, flush=True)
            gc.collect()  # the previous arm's garbage is not this arm's either
            probs, seconds = arms[arm](stream, args)
            fig = figures(probs, labels)
            fig["events_per_s"] = len(events) / seconds
            per_arm[arm] = fig
        fm_speed = per_arm.get("river-fm", {}).get("events_per_s")
        for arm, fig in per_arm.items():
            rows.append([arm, round(fig["auc"], 4), round(fig["auc_last20"], 4),
                         round(fig["logloss"], 4), round(fig["logloss_last20"], 4),
                         fig["events_per_s"],
                         round(fig["events_per_s"] / fm_speed, 1) if fm_speed else "-"])
        print(f"\n{preset}: {args.events:,} events, Bayes-optimal AUC {oracle:.4f}, "
              f"torch threads {args.threads}")
        print(format_table(["arm", "AUC", "AUC last 20%", "logloss", "logloss last 20%",
                            "events/s", "x river-fm"], rows))
        served_rows = joined_rows(per_arm)
        if served_rows:
            print(f"\n{preset}, scored at serving time (join window "
                  f"{synthetic.join_window_s:g} s; click delay median "
                  f"{synthetic.click_delay_median_s:g} s):")
            print(format_table(["arm", "AUC", "logloss", "calibration after 20%",
                                "dAUC vs streamrec", "dlogloss", "dAUC vs served",
                                "dlogloss vs served"], served_rows))
        results[preset] = {"oracle_auc": oracle, "arms": per_arm}
        gc.unfreeze()
    write_result(args.out + ("_quick" if args.quick else ""),
                 {"args": vars(args), "threads": args.threads, "streams": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

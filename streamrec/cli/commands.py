"""The ``streamrec`` command line: demo, evaluate, train, serve, replay, generate.

Every command takes ``--config FILE`` (TOML) and repeated ``--set
section.field=value`` overrides; ``STREAMREC_<SECTION>_<FIELD>`` environment
variables sit between the two. Bad configuration exits with status 2 and a
message naming the field; so does an input file that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from streamrec.config import AppConfig, load_config
from streamrec.errors import StreamrecError
from streamrec.runtime import tune_gc

__all__ = ["main"]

log = logging.getLogger("streamrec")

# streamrec.synthetic's presets, named here because importing it loads torch
# (seconds) just to print --help; a unit test keeps the two lists equal.
PRESETS = ("default", "drifting", "bursty_new_users", "popularity_churn",
           "dense_vs_sparse_users", "production")


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StreamrecError(f"--set {pair!r}: expected section.field=value")
        out[key.strip()] = value.strip()
    return out


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number > 0")
    return value


def _at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be >= {low}")
        return value
    return parse


def _input_file(path: str, what: str) -> None:
    """Fail early, naming ``what`` and ``path``, if ``path`` cannot be opened for reading.

    The commands open their input deep inside the pipeline; a missing file
    should read as a usage error, not as a traceback.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise StreamrecError(f"{what} {path!r}: {e.strerror or e}") from None


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> AppConfig:
    overrides: dict[str, Any] = _overrides(args.set or [])
    overrides.update(extra or {})
    return load_config(args.config, overrides=overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamrec.cli.demo import run_demo

    extra: dict[str, Any] = {}
    if args.metrics_port is not None:
        extra["metrics.port"] = args.metrics_port
    config = _config(args, extra)
    tune_gc()
    run_demo(config, duration_s=args.duration, rate=args.rate, serving_port=args.serving_port,
             sync_port=args.sync_port, serving_metrics=args.serving_metrics_port)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    config = _config(args)
    _input_file(args.events, "--events")
    from streamrec.cli.evaluate import evaluate  # torch: only once the inputs are known good

    tune_gc()
    result = evaluate(config, args.events, progress=not args.quiet,
                      discover_events=args.discover_events)
    print(json.dumps(result, sort_keys=True))
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def _cmd_train(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.ingest.source == "file":
        _input_file(config.ingest.path, "ingest.path")
    from streamrec.cli.train import run_training  # torch: only once the inputs are known good

    tune_gc()
    stop = threading.Event()
    _stop_on_signals(stop)
    run_training(config, stop, max_seconds=args.max_seconds)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.serving.worker_count() > 1:
        # The parent of worker processes scores nothing: it never loads torch.
        from streamrec.serving.workers import serve_workers as serve
    else:
        from streamrec.serving.server import serve  # torch: only once the config is known good

    tune_gc()
    try:
        serve(config)
    except OSError as e:  # a port in use or not local: a usage error, not a crash
        raise StreamrecError(str(e)) from None
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    _input_file(args.file, "file")
    from kafka.errors import KafkaError

    from streamrec.ingest.kafka_security import client_security
    from streamrec.ingest.replay import replay
    from streamrec.runtime import kafka_unreachable

    security = client_security(_config(args).ingest)
    tune_gc()
    servers = args.bootstrap_servers.split(",")
    try:
        stats = replay(args.file, args.topic, servers, rate=args.rate,
                       value_format=args.format, progress=not args.quiet, security=security)
    except KafkaError as e:
        raise kafka_unreachable(servers, e) from None
    print(json.dumps({"sent": stats.sent, "skipped_malformed": stats.skipped_malformed,
                      "failed": stats.failed, "seconds": round(stats.seconds, 3)}))
    return 1 if stats.failed else 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from streamrec import synthetic

    cfg = synthetic.PRESETS[args.preset]()  # --preset's choices are PRESETS' names
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if args.file.endswith(".csv"):
        raise StreamrecError(f"{args.file!r}: generate writes JSON lines; name the file .jsonl")
    try:
        synthetic.write_jsonl(args.file, args.events, cfg, form=args.form)
    except OSError as e:
        raise StreamrecError(f"cannot write {args.file!r}: {e.strerror or e}") from None
    return 0


def _port(text: str) -> int:
    """argparse type: -1 (off), 0 (a free port) or a port number."""
    value = _at_least(-1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value}: a port is at most 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``streamrec`` parser; each subcommand's parser is its ``parser`` default."""
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging (default: info for streamrec, warnings for the rest)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(parser=p)
        if config:
            p.add_argument("--config", metavar="FILE",
                           help="TOML config file (default: none; built-in defaults, then "
                                "STREAMREC_<SECTION>_<FIELD> environment variables)")
            p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                           help="override one config value, over the file and the environment "
                                "(repeatable; default: none)")
        return p

    p = command("demo", "synthetic stream -> trainer -> gRPC serving, in one process")
    p.add_argument("--duration", type=_positive, default=None, help="seconds to run (default: "
                   "until Ctrl-C)")
    p.add_argument("--rate", type=_positive, default=None, help="events per second (default: "
                   "as fast as the trainer goes)")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                   help="the trainer's /metrics port; 0 picks a free one, -1 turns it off "
                        "(default: [metrics] port, 9100)")
    p.add_argument("--serving-metrics-port", type=_port, default=None, metavar="PORT",
                   help="the replica's /metrics port; 0 picks a free one, -1 turns it off "
                        "(default: --metrics-port + 1, 9101; 0 or -1 when that is)")
    p.add_argument("--serving-port", type=_port, default=0, metavar="PORT",
                   help="the replica's Predict/Recommend gRPC port (default: 0, a free port, "
                        "printed at start)")
    p.add_argument("--sync-port", type=_port, default=0, metavar="PORT",
                   help="the replica's parameter sync port (default: 0, a free port)")
    p.set_defaults(func=_cmd_demo)

    p = command("evaluate", "replay an event file test-then-train and print progressive "
                            "metrics as JSON")
    p.add_argument("--events", required=True, metavar="FILE",
                   help=".jsonl or .csv event file, time-ordered (required)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines on stderr (default: one per trainer.log_interval_s)")
    p.add_argument("--discover-events", type=_at_least(1), default=10_000, metavar="N",
                   help="without model.sparse_features / dense_features set, the model "
                        "takes the features of the first N impressions and examples "
                        "(default: 10000)")
    p.set_defaults(func=_cmd_evaluate)

    p = command("train", "consume Kafka (or ingest.path) and train online, pushing "
                         "parameters to serving replicas")
    p.add_argument("--max-seconds", type=_positive, default=None, metavar="SECONDS",
                   help="stop after this long, as on SIGTERM (default: until SIGTERM/SIGINT)")
    p.set_defaults(func=_cmd_train)

    p = command("serve", "run a serving replica")
    p.set_defaults(func=_cmd_serve)

    p = command("replay", "produce a file's events into Kafka (connecting as [ingest] says: "
                          "security_protocol, TLS files, SASL)")
    p.add_argument("file", help=".jsonl or .csv event file")
    p.add_argument("--topic", required=True, help="the Kafka topic to produce to (required)")
    p.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                   help="Kafka brokers to connect to (required)")
    p.add_argument("--rate", type=_positive, default=None,
                   help="events per second (default: as fast as Kafka takes them)")
    p.add_argument("--format", choices=("json", "protobuf"), default="json",
                   help="message value encoding: json or protobuf streamrec.events.Event "
                        "(default: json)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar on stderr (default: shown)")
    p.set_defaults(func=_cmd_replay)

    p = command("generate", "write a synthetic event file (JSONL)", config=False)
    p.add_argument("file", help="the .jsonl file to write (replaced if it exists)")
    p.add_argument("--events", type=_at_least(1), default=200_000, metavar="N",
                   help="how many events to write (default: 200000)")
    p.add_argument("--preset", choices=PRESETS, default="default", metavar="NAME",
                   help=f"the stream's shape, one of: {', '.join(PRESETS)} (default: default)")
    p.add_argument("--seed", type=_at_least(0), default=None, metavar="N",
                   help="random seed; the same preset and seed write the same file (default: "
                        "the preset's, 7)")
    p.add_argument("--form", choices=["labeled", "joined"], default="labeled",
                   help="labeled examples, or impressions and delayed clicks (production form; "
                        "evaluate it with --set ingest.join_window_s=60, the generator's window) "
                        "(default: labeled)")
    p.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them with the top-level usage
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # Our own packages log at INFO; third-party libraries (fbgemm announces
    # every kernel library it loads) only from WARNING unless --verbose.
    logging.getLogger("streamrec").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # torchrec's import trips a torch.fx notice about tracing APIs, not about us.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except StreamrecError as e:
        print(f"streamrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


"""`streamrec demo` in-process: synthetic stream -> trainer -> gRPC replica -> /metrics."""

from __future__ import annotations

import io
import urllib.request

import pytest

from streamrec.config import load_config
from streamrec.cli.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_loop_and_reports_progress() -> None:
    out = io.StringIO()
    config = load_config(env={}, overrides={"metrics.port": "0", "trainer.log_interval_s": "1",
                                            "trainer.threads": "1"})
    summary = run_demo(config, duration_s=12, rate=3000, out=out,
                       install_signal_handlers=False)
    lines = [line for line in out.getvalue().splitlines() if "events/s=" in line]
    assert len(lines) >= 5, out.getvalue()
    assert summary.stats.examples > 10_000
    assert summary.serving_version > 0  # the replica received parameters over gRPC
    assert summary.stats.progress["auc"] > 0.55
    assert "serving_version=" in lines[-1] and "staleness=" in lines[-1]
    for url, name in ((summary.trainer_metrics_url, "streamrec_trainer_examples_total"),
                      (summary.serving_metrics_url, "streamrec_serving_model_version")):
        with urllib.request.urlopen(url, timeout=5) as r:
            assert name in r.read().decode()


def test_at_full_speed_the_demo_scores_what_it_learns() -> None:
    # Without --rate, the stream's event time runs ahead of the wall clock;
    # the labels must still be released as event time passes, or the figures
    # printed would cover a few dozen of the examples learned.
    config = load_config(env={}, overrides={"metrics.port": "-1", "trainer.log_interval_s": "1",
                                            "trainer.threads": "1"})
    summary = run_demo(config, duration_s=8, out=io.StringIO(), serving_metrics=-1,
                       install_signal_handlers=False)
    progress = summary.stats.progress
    assert progress["examples"] > 0.5 * summary.stats.examples > 5_000
    assert progress["auc"] > 0.6 and 0.9 < progress["calibration"] < 1.1

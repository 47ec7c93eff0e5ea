"""The command line explains itself: help with defaults, subcommand usage on errors."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from streamrec.cli import commands as cli
from streamrec.trainer.loop import LoopStats, RecentRate


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_and_flag_has_help_stating_its_default() -> None:
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {c.dest for c in sub._choices_actions} == set(subcommands())
    assert all(c.help for c in sub._choices_actions)
    for name, command in subcommands().items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"streamrec {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help"
            if action.option_strings and not action.required:
                assert "default" in action.help, f"{what}: help does not state the default"
            if action.default not in (None, False):
                assert str(action.default) in action.help, f"{what}: {action.help!r}"


def test_a_wrong_flag_prints_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--confg", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: streamrec train [-h] [--config FILE]")
    assert "streamrec train: error: unrecognized arguments: --confg x" in err


def test_generate_help_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from streamrec import synthetic

    assert cli.PRESETS == tuple(synthetic.PRESETS)
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--events N", "--preset NAME", "--seed N"):
        assert flag in out
    assert f"one of: {', '.join(synthetic.PRESETS)} (default: default)" in out


def test_demo_ports_are_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_demo(config: Any, **kwargs: Any) -> None:
        seen.update(kwargs, metrics_port=config.metrics.port)

    monkeypatch.setattr("streamrec.cli.demo.run_demo", fake_demo)
    monkeypatch.setattr(cli, "tune_gc", lambda: None)
    assert cli.main(["demo", "--metrics-port", "9200", "--serving-metrics-port", "9300",
                     "--serving-port", "6000", "--sync-port", "6001"]) == 0
    assert seen == dict(duration_s=None, rate=None, metrics_port=9200, serving_metrics=9300,
                        serving_port=6000, sync_port=6001)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--serving-port", "70000"])


def test_the_serving_metrics_port_follows_the_trainers() -> None:
    from streamrec.cli.demo import serving_metrics_port

    assert [serving_metrics_port(p) for p in (9100, 0, -1)] == [9101, 0, -1]


def test_progress_rate_is_over_the_last_interval_not_since_the_start() -> None:
    rate = RecentRate()
    assert rate.update(LoopStats(examples=10_000, wall_seconds=5.0)) == 2_000
    # Training stalls: the rate drops to what the last interval did...
    assert rate.update(LoopStats(examples=10_100, wall_seconds=10.0)) == 20
    # ...and a report right after (the final one) is measured from the one before.
    assert rate.update(LoopStats(examples=10_101, wall_seconds=10.01)) == pytest.approx(
        101 / 5.01)

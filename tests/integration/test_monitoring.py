"""Monitoring on real parts: promtool on deploy/prometheus, then a real
Prometheus server, with the alert rules loaded, scraping a running `streamrec
demo` (trainer, sync, serving) and a `streamrec train` that runs
deploy/streamrec.toml against a real Kafka-protocol broker (ingest); every
dashboard query is run against what it scraped.

Prometheus and promtool come from scripts/install-prometheus.sh (`make test`
runs it); without them these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_assets import (BUILTIN_SERIES, DEPLOY, ROOT, alert_rules, dashboard_exprs,
                                 metric_names_in)
from kafka import KafkaProducer

from streamrec.ingest.kafka_source import create_topics
from streamrec.synthetic import default, write_jsonl
from tests.integration.processes import (free_port, http_get, running_prometheus, start_cli,
                                         stop, wait_until)

pytestmark = pytest.mark.integration

BIN = ROOT / ".cache" / "prometheus" / "bin"
RULES = DEPLOY / "prometheus" / "alerts.yml"
EVENTS = 2000


def tool(name: str) -> Path:
    path = BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run scripts/install-prometheus.sh (or `make prometheus`)")
    return path


def promtool(*args: str) -> str:
    result = subprocess.run([str(tool("promtool")), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_accepts_the_config_and_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_alert_rules_fire_when_they_should() -> None:
    # deploy/prometheus/alerts.test.yml: synthetic series, expected alerts.
    assert "SUCCESS" in promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """A running `streamrec demo`; yields its trainer and serving /metrics ports."""
    tmp = tmp_path_factory.mktemp("demo")
    log = tmp / "demo.log"
    trainer_port = free_port()
    # A duration longer than the module runs: the demo is stopped below.
    # A free serving /metrics port: the default, the trainer's + 1, may be taken.
    proc = start_cli(["demo", "--duration", "900", "--rate", "2000",
                      "--metrics-port", str(trainer_port), "--serving-metrics-port",
                      str(free_port()), "--set", "trainer.threads=1"], log)

    def serving_port() -> int | None:
        assert proc.poll() is None, log.read_text()[-3000:]
        found = re.search(r"serving http://[\d.]+:(\d+)/metrics", log.read_text())
        return int(found.group(1)) if found else None

    try:
        ports = {"trainer": trainer_port,
                 "serving": wait_until("the demo to print its metrics URLs", serving_port,
                                       timeout_s=90)}
        yield ports
    finally:
        # Ctrl-C, as the README tells a user: everything stops cleanly.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            stop(proc)
            pytest.fail(f"the demo did not stop on Ctrl-C: {log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def kafka_trainer(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[int]:
    """`streamrec train` with deploy/streamrec.toml on a real broker; yields its /metrics port.

    Only what must differ on a test machine is overridden: addresses, topic
    names, the checkpoint directory and interval, and no replicas to push to.
    """
    tmp = tmp_path_factory.mktemp("kafka-trainer")
    topic, dead_topic = "monitoring-events", "monitoring-dead-letters"
    create_topics(kafka_broker, [topic, dead_topic], partitions=2)
    events = tmp / "events.jsonl"
    write_jsonl(events, EVENTS, default())
    subprocess.run([sys.executable, "-m", "streamrec.cli", "replay", str(events), "--topic",
                    topic, "--bootstrap-servers", kafka_broker, "--quiet"], cwd=ROOT,
                   check=True, timeout=120)
    # One event without a timestamp, from a producer that does not validate (replay does).
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    producer.send(topic, b'{"type": "example", "user_id": 1, "item_id": 2, "label": 1}').get(30)
    producer.close()
    port = free_port()
    overrides = {"ingest.bootstrap_servers": kafka_broker, "ingest.topics": topic,
                 "ingest.dead_letter_topic": dead_topic, "ingest.group_id": "monitoring",
                 "trainer.checkpoint_dir": str(tmp / "ckpt"), "trainer.checkpoint_interval_s": 1,
                 "trainer.threads": 1, "sync.replicas": "", "metrics.host": "127.0.0.1",
                 "metrics.port": port}
    args = ["train", "--config", str(DEPLOY / "streamrec.toml")]
    for key, setting in overrides.items():
        args += ["--set", f"{key}={setting}"]
    proc = start_cli(args, tmp / "train.log")
    try:
        yield port
    finally:
        assert stop(proc) == 0, (tmp / "train.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def serving_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`streamrec serve` with two worker processes (the demo serves in-process, one
    replica); yields its /metrics port, which carries the workers' series."""
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    args = ["serve", "--set", "serving.workers=2", "--set", f"serving.port={free_port()}",
            "--set", f"serving.sync_port={free_port()}", "--set", "serving.token=monitoring",
            "--set", "metrics.host=127.0.0.1", "--set", f"metrics.port={port}"]
    proc = start_cli(args, tmp / "serve.log")
    try:
        yield port
    finally:
        assert stop(proc) == 0, (tmp / "serve.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def prometheus(demo: dict[str, int], kafka_trainer: int, serving_workers: int,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping every process each second, with deploy's alert rules."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": f"streamrec-{name}",
             "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for name, port in (*demo.items(), ("kafka-trainer", kafka_trainer),
                               ("serving-workers", serving_workers))],
    }
    with running_prometheus(tool("prometheus"), config,
                            tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = json.loads(http_get(f"{url}/api/v1/{path}{query}", timeout_s=10))
    assert body["status"] == "success", body
    return body["data"]


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    return api(url, "query", query=expr)["result"]


def value(url: str, expr: str) -> float:
    result = instant(url, expr)
    return float(result[0]["value"][1]) if result else float("nan")


def test_prometheus_scrapes_every_process(prometheus: str) -> None:
    for job in ("streamrec-trainer", "streamrec-serving", "streamrec-kafka-trainer",
                "streamrec-serving-workers"):
        wait_until(f"up{{job={job!r}}} == 1",
                   lambda job=job: value(prometheus, f'up{{job="{job}"}}') == 1, timeout_s=60)
    wait_until("Prometheus to see examples learned",
               lambda: value(prometheus, "streamrec_trainer_examples_total") > 0, timeout_s=90)
    wait_until("a non-zero examples rate",
               lambda: value(prometheus, "sum(rate(streamrec_trainer_examples_total[5s]))") > 0,
               timeout_s=30)
    wait_until("the replica to serve a model version",
               lambda: value(prometheus, "max(streamrec_serving_model_version)") > 0,
               timeout_s=60)
    wait_until("the Kafka trainer to read every record",
               lambda: value(prometheus, "sum(streamrec_ingest_records_total)") == EVENTS + 1,
               timeout_s=90)
    assert value(prometheus, 'streamrec_ingest_dead_letters_total{kind="missing_field"}') == 1


def test_alert_rules_load_and_evaluate_on_live_data(prometheus: str, demo: dict[str, int]
                                                   ) -> None:
    expected = {r["alert"] for r in alert_rules()}
    learning = f"127.0.0.1:{demo['trainer']}"

    def healthy_and_quiet() -> bool:
        rules = {r["name"]: r for g in api(prometheus, "rules")["groups"] for r in g["rules"]}
        assert set(rules) == expected, sorted(rules)
        unhealthy = {name: (r["health"], r.get("lastError")) for name, r in rules.items()
                     if r["health"] != "ok"}
        assert not unhealthy, unhealthy
        # The rules read the real series: the demo's trainer, which learns all
        # along, is neither absent nor stalled. (The Kafka trainer learns its
        # 2000 events and then idles, so NotLearning may rightly go pending
        # for that instance.)
        firing = {(name, a["labels"].get("instance"), a["state"])
                  for name in ("StreamrecTrainerAbsent", "StreamrecTrainerNotLearning")
                  for a in rules[name].get("alerts", [])
                  if a["labels"].get("instance") in (learning, None)}
        assert not firing, firing
        return True

    wait_until("Prometheus to scrape the trainer",
               lambda: value(prometheus, f'streamrec_trainer_examples_total{{instance="{learning}"}}')
               > 0, timeout_s=90)
    wait_until("every alert rule to evaluate healthy on live data", healthy_and_quiet,
               timeout_s=30)


def test_dashboard_queries_return_data(prometheus: str) -> None:
    wait_until("the replica to serve a model version",
               lambda: value(prometheus, "max(streamrec_serving_model_version)") > 0,
               timeout_s=90)
    wait_until("the Kafka trainer to commit offsets",
               lambda: value(prometheus, 'sum(streamrec_ingest_commits_total{result="ok"})') > 0,
               timeout_s=90)
    used = set().union(*(metric_names_in(e) for _, e in dashboard_exprs()),
                       *(metric_names_in(r["expr"]) for r in alert_rules()))

    def every_panel_has_data() -> bool:
        scraped = set(api(prometheus, "label/__name__/values"))
        missing = sorted(used - BUILTIN_SERIES - scraped)
        assert not missing, f"series no running process exports: {missing}"
        empty = []
        for title, expr in dashboard_exprs():
            # $__rate_interval is Grafana's; 5 s is five scrapes here. A syntax
            # error fails the query itself.
            if not instant(prometheus, expr.replace("$__rate_interval", "5s")):
                empty.append((title, expr))
        assert not empty, f"panels without data: {empty}"
        return True

    # Series labelled per push or per request appear with the first ones, and
    # a rate needs two scrapes of them.
    wait_until("every dashboard query over the demo's metrics to return data",
               every_panel_has_data, timeout_s=30)

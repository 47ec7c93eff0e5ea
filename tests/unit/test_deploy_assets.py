"""deploy/ is consistent with the code: configs load, commands parse, ports,
names and metrics match what the processes really use.

Nothing here runs Docker, Kubernetes or Prometheus (promtool checks are in
tests/integration/test_monitoring.py); these tests read the files and check
them against streamrec's own config loader, CLI parser and metric definitions.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from streamrec.cli.commands import build_parser
from streamrec.config import AppConfig, load_config
from tests.deploy_assets import (BUILTIN_SERIES, DEPLOY, ROOT, MetricCatalogue, alert_rules,
                                 dashboard, dashboard_exprs, dashboard_panels, load_yaml,
                                 load_yaml_all, metric_names_in)

COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
STREAMREC_IMAGE = "streamrec:latest"


@pytest.fixture(scope="module")
def catalogue() -> MetricCatalogue:
    return MetricCatalogue()


# --------------------------------------------------------------------- metrics

def test_catalogue_knows_suffixes_the_client_exposes(catalogue: MetricCatalogue) -> None:
    # Counters are read as _total, histograms as _bucket/_count/_sum, never bare.
    assert catalogue.defines("streamrec_trainer_examples_total")
    assert not catalogue.defines("streamrec_trainer_examples")
    assert catalogue.defines("streamrec_trainer_table_admitted_ids_total")  # CounterMetricFamily
    assert catalogue.defines("streamrec_serving_request_seconds_bucket")
    assert not catalogue.defines("streamrec_serving_request_seconds")
    assert catalogue.defines("streamrec_trainer_progressive_window_auc")  # f-string name
    assert catalogue.defines("streamrec_serving_staleness_seconds")
    assert not catalogue.defines("streamrec_serving_staleness")


def test_catalogue_follows_a_renamed_metric(tmp_path: Path) -> None:
    code = tmp_path / "serving"
    code.mkdir()
    (code / "m.py").write_text('Gauge("streamrec_serving_model_generation", "renamed")\n')
    renamed = MetricCatalogue(tmp_path, ("serving",))
    assert renamed.defines("streamrec_serving_model_generation")
    assert not renamed.defines("streamrec_serving_model_version")


def _expr_names() -> list[tuple[str, str, set[str]]]:
    out = [(f"dashboard panel {title!r}", expr, metric_names_in(expr))
           for title, expr in dashboard_exprs()]
    out += [(f"alert {r['alert']}", r["expr"], metric_names_in(r["expr"])) for r in alert_rules()]
    return out


def test_dashboard_and_alerts_read_only_metrics_the_code_defines(
        catalogue: MetricCatalogue) -> None:
    unknown = [(where, name) for where, _, names in _expr_names() for name in sorted(names)
               if name not in BUILTIN_SERIES and not catalogue.defines(name)]
    assert not unknown, f"metrics no code defines (renamed? check `grep -rn streamrec_ " \
                        f"ingest trainer serving`): {unknown}"


def test_every_expression_reads_a_metric() -> None:
    empty = [where for where, _, names in _expr_names() if not names]
    assert not empty


def test_dashboard_shows_every_metric_family(catalogue: MetricCatalogue) -> None:
    used = set().union(*(names for _, _, names in _expr_names() if names))
    missing = [f for f in catalogue.families if not catalogue.family_used(f, used)]
    assert not missing, f"add a dashboard panel (deploy/grafana/dashboard.json) for {missing}"


# ------------------------------------------------------------------- dashboard

def test_dashboard_is_importable_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]] + \
        [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_has_a_datasource_and_queries() -> None:
    panels = list(dashboard_panels())
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']}: no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


# -------------------------------------------------------------- configs, image

@pytest.mark.parametrize("name", ["streamrec.toml", "serving.toml"])
def test_deploy_configs_load(name: str) -> None:
    config = load_config(DEPLOY / name, env={})
    # Other containers reach these processes: they must not listen on loopback only.
    assert config.metrics.host == "0.0.0.0"
    if name == "serving.toml":
        assert config.serving.host == "0.0.0.0" and config.serving.sync_host == "0.0.0.0"


def test_serving_configs_have_no_model_section_the_replica_would_ignore() -> None:
    # A replica builds its model from the trainer's snapshot; a [model] in its
    # config told operators to keep a second copy that does nothing.
    configmap = load_yaml(DEPLOY / "k8s" / "configmap.yaml")
    for text in ((DEPLOY / "serving.toml").read_text(), configmap["data"]["serving.toml"]):
        assert "model" not in tomllib.loads(text)


def _makefile_pin(package: str) -> str:
    found = re.search(rf"install (?:--no-deps )?{package}==([\w.+]+)",
                      (ROOT / "Makefile").read_text())
    assert found, f"no {package} pin in the Makefile"
    return found.group(1)


def test_dockerfile_installs_the_makefile_stack() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert f"ARG TORCH_VERSION={_makefile_pin('torch')}\n" in text
    assert f"ARG TORCHREC_VERSION={_makefile_pin('torchrec')}\n" in text
    assert "download.pytorch.org/whl/cpu" in text  # the CPU build, not CUDA
    assert "pip install -r requirements.txt" in text
    assert 'pip install --no-deps "torchrec==${TORCHREC_VERSION}"' in text
    # The compiled extensions are built by the install, against the torch installed before.
    assert "COPY pyproject.toml setup.py" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    assert 'ENTRYPOINT ["streamrec"]' in text
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    for package in packages:
        name = package.rstrip("*")
        assert f"COPY {name}/ {name}/" in text, f"the image lacks the {name} package"


# --------------------------------------------------------------------- compose

def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} (with defaults, as on a machine without those
    variables) and $$ -> $."""
    if isinstance(value, str):
        value = re.sub(r"(?<!\$)\$\{\w+:?-([^}]*)\}", r"\1", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(load_yaml(COMPOSE))


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) or volume name."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def _host_file(service: dict[str, Any], container_path: str) -> Path:
    """The file under deploy/ that ``service`` sees at ``container_path``."""
    path = PurePosixPath(container_path)
    for target, source in _mounts(service).items():
        if source.startswith(".") and (path == PurePosixPath(target)
                                       or PurePosixPath(target) in path.parents):
            return DEPLOY / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from deploy/")


def _compose_config(service: dict[str, Any]) -> AppConfig:
    args = build_parser().parse_args(service["command"])
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    return load_config(_host_file(service, args.config), env=env)


def _streamrec_services(compose: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items()
            if s.get("image") == STREAMREC_IMAGE and s.get("command", [None])[0] == command}


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(_streamrec_services(compose, "train")) == {"trainer"}
    assert len(_streamrec_services(compose, "serve")) == 2
    assert services["trainer"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert {"prometheus", "grafana", "kafka-init"} <= set(services)


def test_compose_commands_parse_and_configs_load(compose: dict[str, Any]) -> None:
    for command in ("train", "serve"):
        for name, service in _streamrec_services(compose, command).items():
            config = _compose_config(service)
            assert config.sync.token or config.serving.token, f"{name}: no sync token"


def test_compose_trainer_reaches_kafka_and_every_replica(compose: dict[str, Any]) -> None:
    services = compose["services"]
    trainer = _compose_config(services["trainer"])
    kafka_env = services["kafka"]["environment"]
    advertised = dict(re.findall(r"(\w+)://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"]))
    assert trainer.ingest.bootstrap_servers == [advertised[kafka_env[
        "KAFKA_INTER_BROKER_LISTENER_NAME"]]]
    created = re.findall(r"(?:^|\s)([\w.-]+):\d+", services["kafka-init"]["command"][0])
    assert set(trainer.ingest.topics) | {trainer.ingest.dead_letter_topic} <= set(created)
    servings = _streamrec_services(compose, "serve")
    expected = []
    for name, service in servings.items():
        serving = _compose_config(service)
        expected.append(f"{name}:{serving.serving.sync_port}")
        assert serving.serving.token == trainer.sync.token, f"{name}: token differs"
        published = [p.split(":") for p in service.get("ports", [])]
        assert [int(p[-1]) for p in published] == [serving.serving.port], name
    assert sorted(trainer.sync.replicas) == sorted(expected)
    checkpoints = PurePosixPath(trainer.trainer.checkpoint_dir)
    assert any(PurePosixPath(t) in checkpoints.parents and not s.startswith(".")
               for t, s in _mounts(services["trainer"]).items()), "checkpoints not on a volume"


def test_compose_loadgen_feeds_the_trainer_topic(compose: dict[str, Any]) -> None:
    loadgen = compose["services"]["loadgen"]
    script = loadgen["command"][0].replace("\\\n", " ")
    script = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", script)
    lines = [shlex.split(line) for line in script.splitlines()
             if line.strip().startswith("streamrec ")]
    commands = [build_parser().parse_args(line[1:]) for line in lines]
    assert [c.command for c in commands] == ["generate", "replay"]
    trainer = _compose_config(compose["services"]["trainer"])
    assert commands[1].topic in trainer.ingest.topics
    assert commands[1].file == commands[0].file


def test_prometheus_scrapes_every_compose_process(compose: dict[str, Any]) -> None:
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {t for job in prometheus["scrape_configs"] if job["job_name"].startswith("streamrec")
               for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for command in ("train", "serve"):
        for name, service in _streamrec_services(compose, command).items():
            expected.add(f"{name}:{_compose_config(service).metrics.port}")
    assert targets == expected
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    service = compose["services"]["prometheus"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in service["command"] if "=" in a)
    assert _host_file(service, flags["config.file"]) == DEPLOY / "prometheus" / "prometheus.yml"


def test_grafana_provisioning_finds_the_dashboard_and_prometheus(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = _host_file(grafana, "/etc/grafana/provisioning")
    providers = load_yaml(provisioning / "dashboards" / "streamrec.yml")["providers"]
    (provider,) = providers
    dashboards = [t for t, s in _mounts(grafana).items()
                  if (DEPLOY / s).resolve() == (DEPLOY / "grafana" / "dashboard.json").resolve()]
    assert [str(PurePosixPath(d).parent) for d in dashboards] == [provider["options"]["path"]]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in compose["services"]
    assert f"{port}:{port}" in compose["services"][host]["ports"]


# ------------------------------------------------------------------ kubernetes

@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml_all(path)]
    assert docs
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def _container_config(docs: list[dict[str, Any]], workload: dict[str, Any], tmp: Path
                      ) -> tuple[dict[str, Any], AppConfig]:
    """The workload's container and the config it loads (ConfigMap TOML + Secret env)."""
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = PurePosixPath(args.config)
    (mount,) = [m for m in container["volumeMounts"]
                if PurePosixPath(m["mountPath"]) == config_path.parent]
    config_map = _one(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    env = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = _one(docs, "Secret", ref["name"])["stringData"][ref["key"]] \
            if ref else var["value"]
    local = tmp / f"{workload['metadata']['name']}-{config_path.name}"
    local.write_text(config_map["data"][config_path.name])
    return container, load_config(local, env=env)


def test_manifests_are_namespace_free_and_complete(k8s: list[dict[str, Any]]) -> None:
    for doc in k8s:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in k8s)
    assert ("Deployment", "streamrec-trainer") in kinds
    assert ("StatefulSet", "streamrec-serving") in kinds
    assert [k for k, _ in kinds].count("Service") == 2


def test_selectors_match_pod_labels(k8s: list[dict[str, Any]]) -> None:
    workloads = _workloads(k8s)
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in k8s if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        chosen = [w for w in workloads
                  if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(chosen) == 1, service["metadata"]["name"]
        (container,) = chosen[0]["spec"]["template"]["spec"]["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)


def test_pods_turn_off_service_links(k8s: list[dict[str, Any]]) -> None:
    # A Service named streamrec-serving makes Kubernetes inject
    # STREAMREC_SERVING_PORT=tcp://..., which load_config reads as serving.port.
    for w in _workloads(k8s):
        assert w["spec"]["template"]["spec"]["enableServiceLinks"] is False, \
            w["metadata"]["name"]


def test_k8s_configs_load_and_match_ports(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    for w in _workloads(k8s):
        container, config = _container_config(k8s, w, tmp_path)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == config.metrics.port == ports["metrics"]
        assert config.metrics.host == "0.0.0.0"
        assert container["image"] == STREAMREC_IMAGE
        if container["args"][0] == "serve":
            assert (ports["grpc"], ports["sync"]) == (config.serving.port, config.serving.sync_port)
            assert config.serving.token, "serving.token must come from the Secret"
            probes = (container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"])
            assert all(p["port"] == config.serving.port for p in probes)
            assert probes[0]["service"] == "streamrec.serving.Recommender"


def test_trainer_pushes_to_every_serving_pod(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    trainer = _one(k8s, "Deployment", "streamrec-trainer")
    serving = _one(k8s, "StatefulSet", "streamrec-serving")
    _, trainer_config = _container_config(k8s, trainer, tmp_path)
    _, serving_config = _container_config(k8s, serving, tmp_path)
    headless = _one(k8s, "Service", serving["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # Replicas get ready only after their first push: their names must resolve before.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    name = serving["metadata"]["name"]
    expected = [f"{name}-{i}.{headless['metadata']['name']}:{serving_config.serving.sync_port}"
                for i in range(serving["spec"]["replicas"])]
    assert trainer_config.sync.replicas == expected
    assert trainer_config.sync.token == serving_config.serving.token


def test_trainer_keeps_checkpoints_on_its_claim(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    trainer = _one(k8s, "Deployment", "streamrec-trainer")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"  # never two trainers at once
    container, config = _container_config(k8s, trainer, tmp_path)
    volumes = {v["name"]: v for v in trainer["spec"]["template"]["spec"]["volumes"]}
    checkpoints = PurePosixPath(config.trainer.checkpoint_dir)
    (mount,) = [m for m in container["volumeMounts"]
                if PurePosixPath(m["mountPath"]) in checkpoints.parents]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    _one(k8s, "PersistentVolumeClaim", claim)


def test_the_images_streamrec_variables_are_accepted_by_the_config_loader() -> None:
    # An ENV the config loader refuses would stop every command in the image at start.
    text = (DEPLOY / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(STREAMREC_[A-Z_]+)=(\S+)", text))
    assert "STREAMREC_NATIVE_DIR" not in env  # nothing reads it: extensions build at install
    load_config(env=env)

"""Config: TOML < env < CLI precedence, and bad values rejected with the field named."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.config import MAX_CHUNK_BYTES, SYNC_MAX_MESSAGE_BYTES, ServingConfig, SyncConfig, \
    TrainerConfig, load_config
from streamrec.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamrec.toml"
    path.write_text(text)
    return path


def test_defaults_load_without_a_file() -> None:
    config = load_config(env={})
    assert config.trainer == TrainerConfig()
    assert config.table("item_id") == config.table_defaults


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
[trainer]
batch_size = 64
dense_lr = 0.01
[sync]
replicas = ["10.0.0.1:50052"]
""")
    env = {"STREAMREC_TRAINER_BATCH_SIZE": "128", "STREAMREC_SYNC_TOKEN": "s3cret",
           "STREAMREC_SYNC_REPLICAS": "a:1,b:2"}
    config = load_config(path, env=env, overrides={"trainer.batch_size": "512"})
    assert config.trainer.batch_size == 512
    assert config.trainer.dense_lr == 0.01
    assert config.sync.token == "s3cret"
    assert config.sync.replicas == ["a:1", "b:2"]


def test_per_table_settings_fall_back_to_table_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[table_defaults]
min_count = 3
ttl_s = 3600
[tables.item_id]
ttl_s = 60
""")
    config = load_config(path, env={})
    assert config.table("item_id").ttl_s == 60
    assert config.table("item_id").min_count == 3
    assert config.table("user_id").ttl_s == 3600


@pytest.mark.parametrize("text, field", [
    ("[trainer]\nbatch_size = 0", "trainer.batch_size=0"),
    ("[trainer]\nbatch_size = 'big'", "trainer.batch_size='big'"),
    ("[trainer]\nwarmup_batch_size = -1", "trainer.warmup_batch_size=-1"),
    ("[ingest]\nsource = 'carrier-pigeon'", "ingest.source='carrier-pigeon'"),
    ("[ingest]\njoin_max_pending = 0", "ingest.join_max_pending=0"),
    ("[ingest]\ndelayed_feedback = 'later'",
     "ingest.delayed_feedback='later': expected one of wait, fake_negative"),
    ("[ingest]\njoin_window_s = 60\nfake_negative_delay_s = 60", "ingest.fake_negative_delay_s=60"),
    # kafka-python refuses these only when first used: the dead-letter topic
    # at the first malformed record, ending the trainer mid-run.
    ("[ingest]\ndead_letter_topic = 'dead letters'", "ingest.dead_letter_topic='dead letters'"),
    ("[ingest]\ntopics = ['events', 'a/b']", "'a/b' is not a Kafka topic name"),
    ("[ingest]\ntopics = ['..']", "ingest.topics"),
    ("[table_defaults]\nmin_count = -1", "table.min_count=-1"),
    ("[sync]\nreplicas = ['nohostport']", "sync.replicas"),
    ("[serving]\nport = 70000", "serving.port=70000"),
    ("[serving]\nmax_request_ids = 0", "serving.max_request_ids=0"),
    ("[serving]\nmax_request_bytes = 1023", "serving.max_request_bytes=1023"),
    ("[serving]\nmax_request_bytes = 2147483648", "serving.max_request_bytes=2147483648"),
    ("[serving]\nshutdown_delay_s = -0.5", "serving.shutdown_delay_s=-0.5"),
    # A denormal strength underflows the smoothing: every loss NaN, nothing learned.
    ("[model]\nhistory_strength = 1e-320", "model.history_strength"),
    ("[model]\nsparse_features = ['a', 'a']", "model.sparse_features"),
    ("[tables.nosuchfeature]\nttl_s = 1", "nosuchfeature"),
    ("[table_defaults]\nshards = 4\nmax_rows = 2", "table.max_rows=2"),
    ("[table_defaults]\nprune_grace_s = -1", "table.prune_grace_s=-1"),
    ("[table_defaults]\nmin_count = 40000", "table.min_count=40000"),
    ("[table_defaults]\nfilter_width = 64\nmin_count = 65", "table.min_count=65"),
    ("[trainer]\nseed = -1", "trainer.seed=-1"),
    ("[sync]\nmax_chunk_bytes = 67108864", "sync.max_chunk_bytes=67108864"),
    ('[sync]\ntoken = "s3\\u0007cret"', "sync.token"),
    ('[serving]\ntoken = "s3\\tcret"', "serving.token"),
    ('[serving]\ntoken = "caf\\u00e9"', "serving.token"),
    ("[trainer]\nbatchsize = 1", "unknown field"),
    ("[trainr]\nbatch_size = 1", "unknown config section"),
    ("[trainer\n", "not valid TOML"),
])
def test_bad_values_are_rejected_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_serving_request_limits_and_shutdown_delay_have_safe_defaults(tmp_path: Path) -> None:
    serving = load_config(env={}).serving
    assert (serving.max_request_ids, serving.max_request_bytes, serving.shutdown_delay_s) == \
        (1_000_000, 4 << 20, 2.0)
    path = write(tmp_path, "[serving]\nmax_request_ids = 5\nmax_request_bytes = 1024\n"
                           "shutdown_delay_s = 0\n")
    serving = load_config(path, env={}).serving
    assert (serving.max_request_ids, serving.max_request_bytes, serving.shutdown_delay_s) == \
        (5, 1024, 0.0)
    with pytest.raises(ConfigError, match="finite"):
        ServingConfig(shutdown_delay_s=float("inf"))


def test_serving_workers_default_to_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    serving = load_config(env={}).serving
    assert serving.workers == 0
    assert serving.worker_count() == len(os.sched_getaffinity(0))
    serving = load_config(env={"STREAMREC_SERVING_WORKERS": "1"}).serving
    assert serving.worker_count() == 1  # one process, no fan-out
    for bad in ("-1", "257", "two"):
        with pytest.raises(ConfigError, match="serving.*workers"):
            load_config(write(tmp_path, f"[serving]\nworkers = {bad!r}\n"
                              if bad == "two" else f"[serving]\nworkers = {bad}\n"), env={})


def test_readme_config_examples_load(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    assert len(blocks) >= 2  # Configuration and Training on several processes
    for block in blocks:
        load_config(write(tmp_path, block), env={})


def test_largest_chunk_still_fits_the_replicas_message_limit() -> None:
    # The sink sends max_chunk_bytes + 64 KiB of framing; the replica takes 64 MiB.
    assert SyncConfig(max_chunk_bytes=MAX_CHUNK_BYTES).max_chunk_bytes == MAX_CHUNK_BYTES
    assert MAX_CHUNK_BYTES + (64 << 10) <= SYNC_MAX_MESSAGE_BYTES
    with pytest.raises(ConfigError, match="sync.max_chunk_bytes"):
        SyncConfig(max_chunk_bytes=MAX_CHUNK_BYTES + 1)


def test_tokens_from_secret_files_lose_their_trailing_newline(tmp_path: Path) -> None:
    # Kubernetes secrets and `echo s3cret > file` end in a newline, which gRPC
    # refuses in metadata: every push would fail.
    env = {"STREAMREC_SYNC_TOKEN": "s3cret\n", "STREAMREC_SERVING_TOKEN": " s3cret\r\n"}
    config = load_config(env=env)
    assert (config.sync.token, config.serving.token) == ("s3cret", "s3cret")
    path = write(tmp_path, '[sync]\ntoken = "Bearer s3cret\\n"\n')
    assert load_config(path, env={}).sync.token == "Bearer s3cret"


def test_a_bad_token_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError, match="sync.token") as info:
        load_config(env={"STREAMREC_SYNC_TOKEN": "top\x00secret"})
    assert "secret" not in str(info.value).replace("sync.token", "")


def test_bad_env_variable_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigError, match="trainer.batch_size='x'"):
        load_config(env={"STREAMREC_TRAINER_BATCH_SIZE": "x"})
    with pytest.raises(ConfigError, match="STREAMREC_NOPE_X"):
        load_config(env={"STREAMREC_NOPE_X": "1"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize("text, field", [
    ("[ingest]\njoin_window_s = inf", "ingest.join_window_s=inf"),
    ("[table_defaults]\nttl_s = inf", "table_defaults.ttl_s=inf"),
    ("[tables.item_id]\nttl_s = -inf", "tables.item_id.ttl_s=-inf"),
    ("[serving]\ngrace_s = nan", "serving.grace_s=nan"),
    ("[serving]\nshutdown_delay_s = inf", "serving.shutdown_delay_s=inf"),
])
def test_non_finite_numbers_are_rejected_naming_the_field(tmp_path: Path, text: str,
                                                          field: str) -> None:
    # inf passes "> 0" and overflowed later, in int(window_s * 1000).
    with pytest.raises(ConfigError, match="finite") as info:
        load_config(write(tmp_path, text), env={})
    assert field in str(info.value)


def test_non_finite_overrides_and_environment_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="ingest.join_window_s='inf': expected a finite"):
        load_config(env={}, overrides={"ingest.join_window_s": "inf"})
    with pytest.raises(ConfigError, match="sync.interval_s='Infinity'"):
        load_config(env={"STREAMREC_SYNC_INTERVAL_S": "Infinity"})


@pytest.mark.parametrize("text, where", [
    ('ingest = "kafka"', "ingest='kafka': expected a table"),
    ("tables = 5", "tables=5: expected a table"),
    ("[tables]\nitem_id = 5", "tables.item_id=5: expected a table"),
    ("[[trainer]]\nbatch_size = 1", "trainer=[{'batch_size': 1}]: expected a table"),
])
def test_a_section_written_as_a_value_is_a_config_error(tmp_path: Path, text: str,
                                                       where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert where in str(info.value)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[serving]\ntoken = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, env={})  # a directory


def test_file_source_needs_a_path() -> None:
    with pytest.raises(ConfigError, match="ingest.path=''"):
        load_config(env={}, overrides={"ingest.source": "file"})
    config = load_config(env={}, overrides={"ingest.source": "file", "ingest.path": "e.jsonl"})
    assert config.ingest.path == "e.jsonl"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env = {k: v for k, v in env.items() if not k.startswith("STREAMREC_")}
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_exits_with_status_2_naming_a_bad_field_or_a_missing_file(tmp_path: Path) -> None:
    # The README's promise; these all fail before torch is imported, so they are quick.
    missing = str(tmp_path / "absent.jsonl")
    for args, message in [
        (["evaluate", "--events", missing, "--quiet"], f"--events {missing!r}"),
        (["train", "--set", "ingest.source=file", "--set", f"ingest.path={missing}"],
         f"ingest.path {missing!r}"),
        (["train", "--set", "ingest.source=file"], "ingest.path=''"),
        (["evaluate", "--events", missing, "--set", "ingest.join_window_s=inf"],
         "ingest.join_window_s='inf'"),
        (["serve", "--config", str(write(tmp_path, 'ingest = "kafka"'))], "ingest='kafka'"),
    ]:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("streamrec: error: ") and message in result.stderr


def test_serve_on_a_port_in_use_exits_with_status_2_naming_it() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = cli("serve", "--set", f"serving.port={port}", "--set", "metrics.port=0")
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "cannot bind" in result.stderr


def test_the_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    # Containers set STREAMREC_CONFIG instead of passing --config.
    path = write(tmp_path, "[trainer]\nbatch_size = 512")
    assert load_config(env={"STREAMREC_CONFIG": str(path)}).trainer.batch_size == 512
    assert load_config(path, env={"STREAMREC_CONFIG": "/elsewhere.toml"}).trainer.batch_size \
        == 512  # --config wins
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={"STREAMREC_CONFIG": str(tmp_path / "absent.toml")})


def test_variables_that_no_longer_exist_are_refused() -> None:
    # The compiled kernels are built at install time: nothing reads STREAMREC_NATIVE or
    # STREAMREC_NATIVE_DIR, and a deployment that still sets them hears so.
    for name in ("STREAMREC_NATIVE", "STREAMREC_NATIVE_DIR"):
        with pytest.raises(ConfigError, match=name):
            load_config(env={name: "0"})
    with pytest.raises(ConfigError, match="STREAMREC_NATIVE_DIRECTORY"):
        load_config(env={"STREAMREC_NATIVE_DIRECTORY": "/opt/x"})


def test_default_wide_terms_and_field_scale_follow_the_number_of_features() -> None:
    # Up to 12 sparse features: every pair crossed, rows at full step; past
    # that, each feature alone, and rows scaled by 12 / F. Resolved again when
    # evaluate gives the model the stream's features (dataclasses.replace).
    eight = ["user_id", "item_id", *(f"f{k}" for k in range(6))]
    model = load_config(env={}, overrides={"model.sparse_features": ",".join(eight)}).model
    assert len(model.wide_terms) == 8 + 28 and model.field_scale == 1.0
    many = dataclasses.replace(model, sparse_features=[*eight, *(f"g{k}" for k in range(16))])
    assert many.wide_terms == many.sparse_features and many.field_scale == 0.5
    chosen = load_config(env={}, overrides={"model.field_scale": "0.25",
                                            "model.wide_terms": "user_id"}).model
    chosen = dataclasses.replace(chosen, sparse_features=many.sparse_features)
    assert chosen.field_scale == 0.25 and chosen.wide_terms == ["user_id"]
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(ConfigError, match="field_scale"):
            load_config(env={}, overrides={"model.field_scale": bad})


def test_kafka_security_settings_reach_every_client_and_the_password_is_never_shown(
        tmp_path: Path) -> None:
    from streamrec.ingest.kafka_security import client_security
    from streamrec.ingest.kafka_source import consumer_settings

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(env={"STREAMREC_INGEST_SASL_PASSWORD": "hunter2"}, overrides={
        "ingest.security_protocol": "SASL_SSL", "ingest.ssl_cafile": str(ca),
        "ingest.sasl_mechanism": "SCRAM-SHA-512", "ingest.sasl_username": "trainer"}).ingest
    assert client_security(config) == {
        "security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(ca),
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "trainer",
        "sasl_plain_password": "hunter2"}
    settings = consumer_settings(config)
    assert settings["sasl_plain_password"] == "hunter2"
    assert settings["isolation_level"] == "read_committed"
    assert "hunter2" not in repr(config)
    assert client_security(load_config(env={}).ingest) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("overrides, field", [
    ({"ingest.security_protocol": "TLS"}, "security_protocol"),
    ({"ingest.security_protocol": "SSL", "ingest.ssl_cafile": "/no/such/ca.pem"}, "ssl_cafile"),
    ({"ingest.ssl_certfile": __file__, "ingest.security_protocol": "SSL"}, "ssl_keyfile"),
    ({"ingest.security_protocol": "SASL_SSL", "ingest.sasl_password": "hunter2"}, "sasl_username"),
    ({"ingest.security_protocol": "SASL_SSL", "ingest.sasl_username": "u"}, "sasl_password"),
    ({"ingest.sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"ingest.isolation_level": "committed"}, "isolation_level"),
])
def test_bad_kafka_security_settings_are_refused_naming_the_field(
        overrides: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=f"ingest.{field}") as info:
        load_config(env={}, overrides=overrides)
    assert "hunter2" not in str(info.value)


def test_the_joiners_clock_skew_comes_from_the_config() -> None:
    from streamrec.trainer.pipeline import joiner_from_config

    ingest = load_config(env={}, overrides={"ingest.max_clock_skew_s": "2.5"}).ingest
    assert joiner_from_config(ingest, seed=0).max_clock_skew_ms == 2500
    for bad in ("-1", "inf"):
        with pytest.raises(ConfigError, match="max_clock_skew_s"):
            load_config(env={}, overrides={"ingest.max_clock_skew_s": bad})

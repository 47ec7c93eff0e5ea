"""Config: TOML < env < CLI precedence, and bad values rejected with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.config import TrainerConfig, load_config
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
    ("[table_defaults]\nmin_count = -1", "table.min_count=-1"),
    ("[sync]\nreplicas = ['nohostport']", "sync.replicas"),
    ("[serving]\nport = 70000", "serving.port=70000"),
    ("[model]\nsparse_features = ['a', 'a']", "model.sparse_features"),
    ("[tables.nosuchfeature]\nttl_s = 1", "nosuchfeature"),
    ("[trainer]\nbatchsize = 1", "unknown field"),
    ("[trainr]\nbatch_size = 1", "unknown config section"),
    ("[trainer\n", "not valid TOML"),
])
def test_bad_values_are_rejected_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_env_variable_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigError, match="trainer.batch_size='x'"):
        load_config(env={"STREAMREC_TRAINER_BATCH_SIZE": "x"})
    with pytest.raises(ConfigError, match="STREAMREC_NOPE_X"):
        load_config(env={"STREAMREC_NOPE_X": "1"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", env={})

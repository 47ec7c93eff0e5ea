"""``--set`` and ``STREAMREC_*`` values: TOML values or comma lists, refused when neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.config import ModelConfig, load_config
from streamrec.errors import ConfigError


@pytest.mark.parametrize("text", [
    '["user_id","item_id"]',      # TOML, as typed inside single quotes
    '[user_id,item_id]',          # the same after a shell removed the double quotes
    "['user_id', 'item_id']",     # TOML literal strings
    '[ user_id , item_id , ]',    # spaces and a trailing comma, as TOML allows
    'user_id,item_id',            # the comma list
    ' user_id , item_id ',
    '"user_id","item_id"',        # quoted items without brackets
    '"user_id,item_id"',          # one quoted comma list, as a config file writes it
])
def test_a_list_is_read_from_toml_or_comma_text(text: str) -> None:
    config = load_config(env={}, overrides={"model.sparse_features": text})
    assert config.model.sparse_features == ["user_id", "item_id"]
    env = load_config(env={"STREAMREC_MODEL_SPARSE_FEATURES": text})
    assert env.model.sparse_features == ["user_id", "item_id"]


@pytest.mark.parametrize("text", [
    '[user_id, "item_id',       # unterminated
    '[user_id item_id]',        # no comma
    '"user_id",item_id',        # half quoted
    '[user_id]\nx = 1',         # a second TOML key
    '[1, 2]',                   # numbers for names
])
def test_a_list_that_cannot_be_read_is_refused_naming_the_field(text: str) -> None:
    for kwargs in ({"overrides": {"model.sparse_features": text}, "env": {}},
                   {"env": {"STREAMREC_MODEL_SPARSE_FEATURES": text}}):
        with pytest.raises(ConfigError, match=r"^model\.sparse_features="):
            load_config(**kwargs)  # type: ignore[arg-type]


def test_typed_lists_empty_lists_numbers_booleans_and_strings() -> None:
    config = load_config(env={"STREAMREC_MODEL_HIDDEN": "[64, 32]"}, overrides={
        "model.dense_features": "[]", "model.history_features": "",
        "trainer.batch_size": "1_024", "ingest.path": '"my events.jsonl"',
        "ingest.topics": "a,b", "tables.user_id.ttl_s": "60"})
    assert config.model.hidden == [64, 32]
    assert config.model.dense_features == [] and config.model.history_features == []
    # "" typed as a config file writes it (the README's way to turn terms off).
    off = load_config(env={}, overrides={"model.wide_terms": '""', "model.history_features": "''"})
    assert off.model.wide_terms == [] and off.model.history_features == []
    assert config.trainer.batch_size == 1024
    assert config.ingest.path == "my events.jsonl"
    assert config.ingest.topics == ["a", "b"]
    assert config.table("user_id").ttl_s == 60
    with pytest.raises(ConfigError, match="model.hidden='x'"):
        load_config(env={}, overrides={"model.hidden": "[64, x]"})
    with pytest.raises(ConfigError, match="model.hidden"):
        load_config(env={}, overrides={"model.hidden": "[64, 32"})


def test_a_string_field_keeps_odd_text_without_echoing_it_in_an_error() -> None:
    # A token may start with a quote; it is taken as it is, never refused with its text.
    config = load_config(env={"STREAMREC_SYNC_TOKEN": '"s3cret'})
    assert config.sync.token == '"s3cret'
    assert load_config(env={}, overrides={"ingest.group_id": "[g]"}).ingest.group_id == "[g]"


def test_the_feature_lists_are_unset_until_the_user_sets_one(tmp_path: Path) -> None:
    assert not ModelConfig().features_configured
    assert not load_config(env={}).model.features_configured
    path = tmp_path / "c.toml"
    path.write_text("[model]\ndense_features = []\n")
    assert load_config(path, env={}).model.features_configured
    assert load_config(env={"STREAMREC_MODEL_SPARSE_FEATURES": "user_id"}
                       ).model.features_configured
    assert load_config(env={}, overrides={"model.sparse_features": "user_id,item_id"}
                       ).model.features_configured
    assert ModelConfig(sparse_features=["user_id", "item_id"]).features_configured

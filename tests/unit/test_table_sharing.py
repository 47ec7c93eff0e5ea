"""Tables shared by several features (torchrec's feature_names), declared in the config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.config import AppConfig, load_config
from streamrec.errors import ConfigError
from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.model.ctr import model_spec
from streamrec.model.delta import decode_chunks, encode_chunks
from streamrec.serving.replica import ModelReplica
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.parameters import TrainerParameters
from streamrec.trainer.trainer import OnlineTrainer

FEATURES = "user_id,item_id,category,country,hour"
SHARED = """
[model]
sparse_features = ["user_id", "item_id", "category", "country", "hour"]
dense_features = ["price"]

[tables.ids]
features = ["user_id", "item_id"]
min_count = 1
ttl_s = 600.0
"""


def shared_config(tmp_path: Path, **overrides: str) -> AppConfig:
    path = tmp_path / "streamrec.toml"
    path.write_text(SHARED)
    return load_config(path, env={}, overrides={"trainer.batch_size": "128", **overrides})


def test_features_listed_by_a_table_look_it_up(tmp_path: Path) -> None:
    config = shared_config(tmp_path)
    assert config.feature_tables() == {"user_id": "ids", "item_id": "ids", "category": "category",
                                       "country": "country", "hour": "hour"}
    assert config.table("user_id") is config.tables["ids"] is config.table("ids")
    assert config.table("user_id").ttl_s == 600.0
    assert config.table("category") == config.table_defaults
    # The same from the command line.
    cli = load_config(env={}, overrides={"model.sparse_features": FEATURES,
                                         "tables.ids.features": "user_id,item_id"})
    assert cli.feature_tables()["item_id"] == "ids"


def test_without_shared_tables_each_feature_has_its_own_and_the_spec_is_unchanged() -> None:
    config = load_config(env={}, overrides={"model.sparse_features": FEATURES,
                                            "tables.item_id.ttl_s": "5"})
    assert config.feature_tables() == {f: f for f in FEATURES.split(",")}
    assert config.table("item_id").ttl_s == 5
    # Checkpoints written before tables could be shared name this same spec.
    assert model_spec(config.model, config.feature_tables()) == model_spec(config.model)


@pytest.mark.parametrize("text, field, why", [
    ('[tables.ids]\nfeatures = ["user_id", "nope"]',
     "tables.ids.features", "'nope' is not in model.sparse_features"),
    ('[tables.a]\nfeatures = ["user_id", "item_id"]\n[tables.b]\nfeatures = ["item_id"]',
     "tables.b.features", "'item_id' already looks up table 'a'"),
    ('[tables.a]\nfeatures = ["user_id", "item_id"]\n[tables.item_id]\nttl_s = 5.0',
     "tables.item_id.features", "'item_id' already looks up table 'a'"),
    ('[tables.item_id]\nfeatures = ["user_id", "category"]',
     "tables.item_id.features", "named after feature 'item_id' but does not list it"),
    ('[tables.ids]\nfeatures = ["user_id", "user_id"]', "table.features", "twice"),
    ('[table_defaults]\nfeatures = ["user_id"]', "table_defaults.features", "[tables.<name>]"),
    ('[tables.ids]\nttl_s = 5.0', "tables", "list the features that share the table"),
])
def test_bad_table_sharing_is_a_config_error_naming_the_field(
        tmp_path: Path, text: str, field: str, why: str) -> None:
    path = tmp_path / "streamrec.toml"
    path.write_text(f'[model]\nsparse_features = {FEATURES.split(",")!r}\n'.replace("'", '"')
                    + text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert field in str(info.value) and why in str(info.value)


def events_with_shared_ids() -> list[Event]:
    """Synthetic events, then events whose user ids are also item ids."""
    events = list(SyntheticStream(default()).events(1024))
    items = [e.item_id for e in events[:64]]
    return events + [e._replace(user_id=item, timestamp_ms=events[-1].timestamp_ms)
                     for item, e in zip(items, events[:64])]


def train(trainer: OnlineTrainer, events: list[Event]) -> None:
    batcher = Batcher(trainer.features, trainer.dense_features)
    for start in range(0, len(events), 128):
        trainer.train_batch(batcher.build(events[start:start + 128]))


def test_an_id_seen_by_features_sharing_a_table_is_one_row(tmp_path: Path) -> None:
    trainer = OnlineTrainer.from_config(shared_config(tmp_path))
    assert "ids" in trainer.tables and not {"user_id", "item_id"} & set(trainer.tables)
    events = events_with_shared_ids()
    train(trainer, events)
    ids = trainer.tables["ids"]
    users = {e.user_id for e in events}
    items = {e.item_id for e in events}
    assert len(ids) == len(users | items) < len(users) + len(items)
    # Pooled as user and as item, the shared id reads the same row.
    both = next(iter(users & items))
    batcher = Batcher(trainer.features, trainer.dense_features)
    batch = batcher.build([events[0]._replace(user_id=both, item_id=both)])
    pooled = trainer.embeddings.forward(batch.sparse, trainer.event_time_ms, train=False)
    features = trainer.embeddings.features
    assert torch.equal(pooled[0, features.index("user_id")], pooled[0, features.index("item_id")])
    assert pooled[0, features.index("user_id")].abs().sum() > 0


def test_a_replica_scores_a_shared_table_exactly_as_the_trainer(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer = OnlineTrainer.from_config(shared_config(tmp_path, **{"tables.ids.prune_alpha": "0.001"}))
    replica = ModelReplica(registry=CollectorRegistry())
    events = events_with_shared_ids()
    train(trainer, events[:600])
    replica.apply(decode_chunks(encode_chunks(TrainerParameters(trainer).snapshot(1), 65536)))
    train(trainer, events[600:])
    replica.apply(decode_chunks(encode_chunks(TrainerParameters(trainer).collect_delta(2), 65536)))
    assert replica.table_rows() == trainer.table_rows()
    probe = events[-64:]
    batcher = Batcher(trainer.features, trainer.dense_features)
    want = trainer.predict(batcher.build(probe))
    got = [replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in probe]
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-6, rtol=1e-5)


def test_tables_fused_into_one_store_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(env={}, overrides={"model.sparse_features": FEATURES,
                                            "tables.hour.ttl_s": "5",
                                            "model.wide_terms": "user_id,hour"})
    with caplog.at_level(logging.INFO, logger="streamrec.model.tables.base"):
        trainer = OnlineTrainer.from_config(config)
    assert "4 tables (user_id, item_id, category, country) share a config: fused into one store" \
        in caplog.text
    assert trainer.table_stores() == [["user_id", "item_id", "category", "country"], ["hour"],
                                      ["user_id#history", "item_id#history"],
                                      ["user_id#wide"], ["hour#wide"]]
    # The progress line: each embedding table, the history and wide tables summed.
    train(trainer, list(SyntheticStream(default()).events(300)))
    rows = trainer.table_rows()
    assert trainer.rows_summary() == " ".join(
        [f"{f}={rows[f]:,}" for f in FEATURES.split(",")]
        + [f"history={rows['user_id#history'] + rows['item_id#history']:,}",
           f"wide={rows['user_id#wide'] + rows['hour#wide']:,} (2 terms)"])

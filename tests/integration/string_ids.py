"""A model trained on events with string ids, served on real gRPC ports.

Test helpers, and the fixtures ``model`` (trained once per test module) and
``served`` for the modules that import them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.batch import Batcher
from streamrec.ingest.decode import decode_json, event_to_dict
from streamrec.client import RecommenderClient
from streamrec.serving.replica import ModelReplica
from streamrec.serving.server import Servers, create_server
from streamrec.config import ServingConfig, load_config
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer.sync.sink import GrpcDeltaSink
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

TOKEN = "s3cret"


@dataclass
class StringIdModel:
    """A trainer that learned from JSON events naming users "u<n>" and items "sku-<n>".

    ``users`` / ``items`` map each string id to the id the decoder gave it.
    """

    trainer: OnlineTrainer
    users: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)

    def scores(self, user: str, items: list[str]) -> torch.Tensor:
        """The trainer's own scores of ``items`` for ``user`` (no features)."""
        batcher = Batcher(self.trainer.features, [])
        rows = [(self.users[user], self.items[i], None) for i in items]
        return self.trainer.predict(batcher.build_rows(rows))


def train_on_string_ids(events: int = 1280) -> StringIdModel:
    torch.set_num_threads(1)
    cfg = load_config(env={}, overrides={"model.sparse_features": "user_id,item_id",
                                         "model.dense_features": "",
                                         "model.history_features": "",
                                         "trainer.batch_size": "128"})
    model = StringIdModel(OnlineTrainer.from_config(cfg))
    batcher = Batcher(cfg.model.sparse_features, [])
    decoded = []
    for event in SyntheticStream(default()).events(events):
        data = event_to_dict(event)
        user, item = f"u{event.user_id % 20}", f"sku-{event.item_id % 50}"
        data.update(user_id=user, item_id=item)
        decoded.append(decode_json(orjson.dumps(data)))  # the events' own path
        model.users[user] = decoded[-1].user_id
        model.items[item] = decoded[-1].item_id
    for start in range(0, len(decoded), 128):
        model.trainer.train_batch(batcher.build(decoded[start:start + 128]))
    return model


@contextlib.contextmanager
def serving(model: StringIdModel) -> Iterator[tuple[Servers, RecommenderClient]]:
    """A replica holding ``model``'s version 1, and a client to it."""
    registry = CollectorRegistry()
    servers = create_server(ServingConfig(port=0, sync_port=0, token=TOKEN, max_candidates=100),
                            ModelReplica(registry=registry), registry=registry)
    servers.start()
    client = RecommenderClient(f"127.0.0.1:{servers.port}")
    sink = GrpcDeltaSink(f"127.0.0.1:{servers.sync_port}", TOKEN, 65536, 5.0)
    try:
        sink.push(TrainerParameters(model.trainer).snapshot(1))
        yield servers, client
    finally:
        sink.close()
        client.close()
        servers.stop(0)


@pytest.fixture(scope="module", name="model")
def model_fixture() -> StringIdModel:
    return train_on_string_ids()


@pytest.fixture(name="served")
def served_fixture(model: StringIdModel) -> Iterator[tuple[Servers, RecommenderClient]]:
    with serving(model) as pair:
        yield pair

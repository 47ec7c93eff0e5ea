"""The serving tier on real gRPC ports refuses what it must, with the right status:
undecodable bytes (INVALID_ARGUMENT on both ports), lower versions
(FAILED_PRECONDITION), non-finite parameters (INVALID_ARGUMENT), and it never
answers OK with a non-finite score."""

from __future__ import annotations

import math

import grpc
import pytest
import torch

from streamrec.errors import SyncError, VersionGapError
from streamrec.synthetic import SyntheticStream, default
from tests.integration.test_serving_grpc import TOKEN, served, sink  # noqa: F401 (fixture)
from tests.trained import small_trainer
from streamrec.model.delta import DenseParameters, ParameterDelta, TableDelta, UpsertedRows
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters

pytestmark = pytest.mark.integration
# Field 15, wire type 7 (none such): protobuf refuses it.
GARBAGE = [b"\xff\xff\xff\xff", b"\x0f", b"\x0a\x05ab"]


@pytest.fixture(scope="module")
def trainer() -> OnlineTrainer:
    return small_trainer()


def raw_call(port: int, method: str, payload: bytes, streaming: bool = False,
             metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            if streaming:
                channel.stream_unary(method)(iter([payload]), metadata=metadata, timeout=10)
            else:
                channel.unary_unary(method)(payload, metadata=metadata, timeout=10)
    return info.value


@pytest.mark.parametrize("payload", GARBAGE, ids=["ff", "truncated-tag", "short-string"])
def test_undecodable_requests_get_invalid_argument_on_both_ports(served, trainer,
                                                                 payload) -> None:
    servers, _, client, registry = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    auth = (("authorization", f"Bearer {TOKEN}"),)
    for port, method, streaming, metadata in (
            (servers.port, "/streamrec.serving.Recommender/Predict", False, ()),
            (servers.port, "/streamrec.serving.Recommender/Recommend", False, ()),
            (servers.port, "/grpc.health.v1.Health/Check", False, ()),
            (servers.sync_port, "/streamrec.sync.ParameterSync/GetVersion", False, auth),
            (servers.sync_port, "/streamrec.sync.ParameterSync/Push", True, auth)):
        error = raw_call(port, method, payload, streaming, metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
        assert "not a valid" in error.details()
    for method in ("Predict", "Recommend"):
        assert registry.get_sample_value("streamrec_serving_requests_total",
                                         {"method": method, "code": "INVALID_ARGUMENT"}) == 1
    # Nothing else moved, and well-formed calls still work on both ports.
    assert sink(servers).version() == 1
    assert len(client.predict(user_id=1, item_ids=[1, 2]).scores) == 2


def test_a_lower_version_is_refused_with_failed_precondition(served, trainer) -> None:
    servers, replica, client, _ = served
    s = sink(servers)
    s.push(TrainerParameters(trainer).snapshot(5))
    before = client.predict(user_id=3, item_ids=[1, 2, 3]).scores
    for version in (1, 5):
        with pytest.raises(VersionGapError):  # the sink's reading of FAILED_PRECONDITION
            s.push(TrainerParameters(trainer).snapshot(version))
    assert s.version() == 5 and client.predict(user_id=3, item_ids=[1, 2, 3]).scores == before


def test_non_finite_parameters_get_invalid_argument_and_change_nothing(served, trainer) -> None:
    servers, replica, client, _ = served
    s = sink(servers)
    s.push(TrainerParameters(trainer).snapshot(1))
    before = client.predict(user_id=3, item_ids=[1, 2, 3]).scores
    table = trainer.tables["item_id"]
    exported = table.export_all()
    ids, rows = exported.upserted.ids, exported.upserted.values
    rows = rows[:4].clone()
    rows[1, 0] = math.nan
    with pytest.raises(SyncError, match="INVALID_ARGUMENT.*NaN or infinite"):
        s.push(ParameterDelta(2, 1, False,
                              [TableDelta("item_id", table.dim, UpsertedRows(ids[:4], rows))],
                              DenseParameters(), 0, 0, ""))
    assert s.version() == 1 and client.predict(user_id=3, item_ids=[1, 2, 3]).scores == before


def test_a_non_finite_score_is_internal_not_ok(served, trainer) -> None:
    servers, _, client, registry = served
    s = sink(servers)
    snapshot = TrainerParameters(trainer).snapshot(1)
    s.push(snapshot)
    table = trainer.tables["item_id"]
    exported = table.export_all()
    ids, _ = exported.upserted.ids, exported.upserted.values
    dense = {k: v.clone() for k, v in snapshot.dense.weights.items()}
    dense["mlp.0.weight"].fill_(3e38)  # finite, but the logit overflows to NaN
    s.push(ParameterDelta(2, 1, False, [TableDelta("item_id", table.dim, UpsertedRows(
        ids[:1], torch.full((1, table.dim), 3e38)))], DenseParameters(dense), 0, 0, ""))
    with pytest.raises(grpc.RpcError) as info:
        client.predict(user_id=SyntheticStream(default()).events(1).__next__().user_id,
                       item_ids=[int(ids[0]), int(ids[1])])
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "NaN or infinite" in info.value.details()
    assert registry.get_sample_value("streamrec_serving_non_finite_scores_total") == 1


def test_wrongly_typed_features_get_invalid_argument_naming_them(served, trainer) -> None:
    servers, _, client, registry = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    cases = [
        (dict(features={"category": 3.5}), "features: feature 'category' is an id feature"),
        (dict(features={"price": "NaN"}), "features: feature 'price' is dense"),
        (dict(candidate_features=[{"price": 1.0}, {"price": "cheap"}]),
         "candidate_features[1]: feature 'price' is dense"),
        (dict(candidate_columns={"category": [1.5, 2.5]}),
         "candidate_columns: feature 'category' is an id feature"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(user_id=1, item_ids=[1, 2], **kwargs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in info.value.details()
    # Integers are numbers for a dense feature, as in events.
    assert len(client.predict(user_id=1, item_ids=[1, 2], features={"price": 3}).scores) == 2


def test_features_the_model_does_not_read_are_ignored_and_counted(served, trainer,
                                                                 caplog) -> None:
    servers, _, client, registry = served
    sink(servers).push(TrainerParameters(trainer).snapshot(1))
    plain = client.predict(user_id=1, item_ids=[1, 2]).scores
    # A typo scores as if the feature were absent: counted, and named in the log.
    assert client.predict(user_id=1, item_ids=[1, 2], features={"categroy": "c1"}).scores \
        == plain
    client.recommend(user_id=1, item_ids=[1, 2], candidate_features=[{"tags": "a"}, {}])
    for method in ("Predict", "Recommend"):
        assert registry.get_sample_value("streamrec_serving_ignored_features_total",
                                         {"method": method}) == 1
    assert "categroy" in caplog.text

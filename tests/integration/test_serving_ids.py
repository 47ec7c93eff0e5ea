"""String and integer ids over gRPC: requests, responses, the client, bad ids."""

from __future__ import annotations

import grpc
import pytest
import torch

from streamrec.protos import serving_pb2, serving_pb2_grpc
from tests.integration.string_ids import model_fixture, served_fixture  # noqa: F401

pytestmark = pytest.mark.integration

ITEMS = [f"sku-{i}" for i in range(12)]


def test_string_ids_score_the_items_the_events_named(model, served) -> None:
    _, client = served
    want = model.scores("u3", ITEMS)
    assert len(set(want.tolist())) > 1  # distinct items score differently
    got = client.predict(user_id="u3", item_ids=ITEMS)
    torch.testing.assert_close(torch.tensor(got.scores), want, atol=1e-6, rtol=1e-5)
    # The same as sending the ids the strings hash to.
    by_int = client.predict(user_id=model.users["u3"], item_ids=[model.items[i] for i in ITEMS])
    assert by_int.scores == got.scores


def test_recommend_names_each_item_as_it_was_sent(model, served) -> None:
    _, client = served
    want = model.scores("u3", ITEMS)
    best = [ITEMS[j] for j in torch.argsort(want, descending=True, stable=True)[:4]]
    top = client.recommend(user_id="u3", item_ids=ITEMS + ITEMS[:3], k=4)  # duplicates once
    assert [item for item, _ in top.items] == best
    ints = [model.items[i] for i in ITEMS]
    top_int = client.recommend(user_id=model.users["u3"], item_ids=ints, k=4)
    assert [item for item, _ in top_int.items] == [model.items[i] for i in best]
    assert all(type(item) is int for item, _ in top_int.items)


def test_an_integer_client_reads_the_same_wire_as_before(served) -> None:
    # Field numbers and types of user_id / item_ids / ScoredItem.item_id are
    # unchanged: a request encoded by hand as the old messages is answered.
    servers, _ = served
    old_request = bytes([0x08, 0x06,  # field 1 (user_id), sint64 zigzag 3
                         0x1a, 0x02, 0x0e, 0x10])  # field 3 (item_ids), packed 7, 8
    request = serving_pb2.RecommendRequest.FromString(old_request)
    assert (request.user_id, list(request.item_ids)) == (3, [7, 8])
    with grpc.insecure_channel(f"127.0.0.1:{servers.port}") as channel:
        reply = serving_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=5)
    assert sorted(i.item_id for i in reply.items) == [7, 8]
    assert all(i.SerializeToString()[0] == 0x08 for i in reply.items)  # item_id: field 1


@pytest.mark.parametrize("request_fields, reason", [
    (dict(user_id=1, item_ids=[1], item_keys=["a"]), "item_ids (integers) or item_keys"),
    (dict(user_key="", item_keys=["a"]), "user_key is empty"),
    (dict(user_key="u", item_keys=["a", ""]), "item_keys[1] is empty"),
    (dict(user_key="u", item_keys=["a", "x" * 4097]), "item_keys[1]: a string id has at most"),
    (dict(user_key="u", item_keys=["a"] * 101), "over the limit of 100"),
])
def test_bad_string_ids_get_invalid_argument_with_a_reason(served, request_fields,
                                                           reason) -> None:
    servers, client = served
    with grpc.insecure_channel(f"127.0.0.1:{servers.port}") as channel:
        stub = serving_pb2_grpc.RecommenderStub(channel)
        for call, cls in ((stub.Predict, serving_pb2.PredictRequest),
                          (stub.Recommend, serving_pb2.RecommendRequest)):
            with pytest.raises(grpc.RpcError) as info:
                call(cls(**request_fields), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in info.value.details()
    assert client.predict(user_id="u", item_ids=["a"]).model_version == 1  # unharmed


def test_the_client_refuses_a_mix_of_int_and_str_items(served) -> None:
    _, client = served
    with pytest.raises(TypeError, match="not a mix"):
        client.predict(user_id="u3", item_ids=["sku-1", 2])
    with pytest.raises(TypeError, match="not a single str"):
        client.recommend(user_id="u3", item_ids="sku-1")

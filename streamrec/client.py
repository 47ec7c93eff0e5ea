"""A small Python client for the Recommender service.

Users and items are named by integer ids or string ids, as in events: the
server hashes a string to the id the model knows it by (the hash is part of
the API, see protos/serving.proto), and Recommend names each item as it was
sent. gRPC errors reach the caller unchanged (``grpc.RpcError`` with its status
code): INVALID_ARGUMENT for a bad request, FAILED_PRECONDITION before the
replica has a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamrec.protos import event_pb2, serving_pb2, serving_pb2_grpc

__all__ = ["RecommenderClient", "Prediction", "Recommendation", "to_feature_column",
           "to_feature_values"]

FeatureInput = str | int | float | Sequence[str | int | float]
Id = int | str


def _user(user_id: Id) -> dict[str, Id]:
    """The request's user field: user_key for a string, user_id for an integer."""
    if isinstance(user_id, str):
        return {"user_key": user_id}
    return {"user_id": user_id}  # protobuf refuses what is not an integer


def _items(item_ids: Iterable[Id]) -> dict[str, list[Id]]:
    """The request's candidates: item_keys for strings, item_ids for integers, not mixed."""
    if isinstance(item_ids, (str, bytes)):
        raise TypeError(f"item_ids is a list of ids, not a single {type(item_ids).__name__}")
    tolist = getattr(item_ids, "tolist", None)  # numpy: its elements as Python ints
    items = tolist() if callable(tolist) else list(item_ids)
    strings = sum(isinstance(i, str) for i in items)
    if strings and strings == len(items):
        return {"item_keys": items}
    if strings:
        raise TypeError("item_ids are all ints or all strs, not a mix")
    return {"item_ids": items}  # protobuf refuses what is not an integer


def to_feature_values(value: FeatureInput) -> event_pb2.FeatureValues:
    """A Python value or list -> FeatureValues: str -> strings, int -> ids, float -> numbers,
    bool -> the ids 1 and 0 (as in events)."""
    # One value (the common case) goes straight into the constructor.
    kind = type(value)
    if kind is str:
        return event_pb2.FeatureValues(strings=(value,))
    if kind is float:
        return event_pb2.FeatureValues(numbers=(value,))
    if kind is int:
        return event_pb2.FeatureValues(ids=(value,))
    strings: list[str] = []
    ids: list[int] = []
    numbers: list[float] = []
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, bool):
            ids.append(int(v))  # the ids events' true and false are read as
        elif isinstance(v, str):
            strings.append(v)
        elif isinstance(v, int):
            ids.append(v)
        elif isinstance(v, float):
            numbers.append(v)
        else:
            raise TypeError(f"feature value {v!r}: expected str, int or float")
    return event_pb2.FeatureValues(strings=strings, ids=ids, numbers=numbers)


def _features(features: Mapping[str, FeatureInput] | None) -> dict[str, event_pb2.FeatureValues]:
    return {k: to_feature_values(v) for k, v in (features or {}).items()}


def to_feature_column(values: Iterable[str | int | float]) -> serving_pb2.FeatureColumn:
    """One feature's value for every candidate -> FeatureColumn: all str -> strings,
    all int -> ids, all float -> numbers (the types of :func:`to_feature_values`).

    Any iterable of them, numpy arrays included; not a single string.
    """
    if isinstance(values, (str, bytes)):
        raise TypeError(f"a candidate column is a list of values, one per candidate, "
                        f"not a single {type(values).__name__}")
    tolist = getattr(values, "tolist", None)  # numpy: its elements as Python numbers
    values = tolist() if callable(tolist) else list(values)
    kinds = set(map(type, values))
    if kinds == {str}:
        return serving_pb2.FeatureColumn(strings=values)
    if kinds == {int}:
        return serving_pb2.FeatureColumn(ids=values)
    if kinds == {float}:
        return serving_pb2.FeatureColumn(numbers=values)
    raise TypeError(f"a candidate column holds values of one type, str, int or float; got "
                    f"{sorted(k.__name__ for k in kinds) or 'none'}")


def _columns(columns: Mapping[str, Iterable[str | int | float]] | None
             ) -> dict[str, serving_pb2.FeatureColumn]:
    return {k: to_feature_column(v) for k, v in (columns or {}).items()}


@dataclass
class Prediction:
    scores: list[float]
    model_version: int


@dataclass
class Recommendation:
    items: list[tuple[Id, float]]
    model_version: int


def _sent(item: Any) -> Id:
    return str(item.item_key) if item.WhichOneof("item") == "item_key" else int(item.item_id)


class RecommenderClient:
    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = serving_pb2_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _request(self, cls: Any, user_id: Id, item_ids: Iterable[Id],
                 features: Mapping[str, FeatureInput] | None,
                 candidate_features: Sequence[Mapping[str, FeatureInput]] | None,
                 candidate_columns: Mapping[str, Iterable[str | int | float]] | None,
                 **extra: Any) -> Any:
        return cls(**_user(user_id), **_items(item_ids), features=_features(features),
                   candidate_features=[serving_pb2.CandidateFeatures(features=_features(c))
                                       for c in candidate_features or []],
                   candidate_columns=_columns(candidate_columns), **extra)

    def predict(self, user_id: Id, item_ids: Iterable[Id],
                features: Mapping[str, FeatureInput] | None = None,
                candidate_features: Sequence[Mapping[str, FeatureInput]] | None = None,
                candidate_columns: Mapping[str, Iterable[str | int | float]] | None = None
                ) -> Prediction:
        """One click probability per candidate, in order.

        ``user_id`` is an int or a str; ``item_ids`` all ints or all strs.

        Per-candidate features come either as ``candidate_features`` (one mapping
        per candidate) or as ``candidate_columns`` (one list per feature, one
        value per candidate: much cheaper to send for many candidates).
        """
        request = self._request(serving_pb2.PredictRequest, user_id, item_ids, features,
                                candidate_features, candidate_columns)
        reply = self._stub.Predict(request, timeout=self.timeout_s)
        return Prediction(scores=list(reply.scores), model_version=int(reply.model_version))

    def recommend(self, user_id: Id, item_ids: Iterable[Id], k: int = 10,
                  features: Mapping[str, FeatureInput] | None = None,
                  candidate_features: Sequence[Mapping[str, FeatureInput]] | None = None,
                  candidate_columns: Mapping[str, Iterable[str | int | float]] | None = None
                  ) -> Recommendation:
        """The top ``k`` candidates by score (all of them for k = 0), best first.

        Each item comes back as it was sent: a str for string ids, an int otherwise.
        """
        request = self._request(serving_pb2.RecommendRequest, user_id, item_ids, features,
                                candidate_features, candidate_columns, k=k)
        reply = self._stub.Recommend(request, timeout=self.timeout_s)
        return Recommendation(items=[(_sent(i), float(i.score)) for i in reply.items],
                              model_version=int(reply.model_version))

    def health(self, service: str = "") -> bool:
        """True when the server reports SERVING for ``service`` ("" = the process)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                   timeout=self.timeout_s)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



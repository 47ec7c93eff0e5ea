"""The ids of a Predict or Recommend request: integers, or strings hashed as in events.

A request names its user by ``user_id`` or ``user_key`` and its candidates by
``item_ids`` or ``item_keys``; a string id becomes the integer id the model
knows it by through :func:`ingest.ids.hash_id`, the hash every tier (and every
client language, see protos/serving.proto) uses. Recommend answers each item
the way the request named it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamrec.ingest.decode import MAX_STRING
from streamrec.ingest.ids import hash_id
from streamrec.protos import serving_pb2

__all__ = ["IdError", "RequestIds", "request_ids", "scored_item"]


class IdError(ValueError):
    """A request's ids are invalid; the message names the field."""


@dataclass(frozen=True)
class RequestIds:
    """``user`` and ``items`` as model ids; ``sent``: each item as the request named it."""

    user: int
    items: list[int]
    sent: Sequence[int | str]


def _check_key(field: str, key: str) -> None:
    # The same bounds as a string id in an event (ingest.decode).
    if not key:
        raise IdError(f"{field} is empty: a string id has at least one character")
    if len(key) > MAX_STRING:
        raise IdError(f"{field}: a string id has at most {MAX_STRING} characters, "
                      f"got {len(key)}")


def request_ids(request: Any, max_candidates: int) -> RequestIds:
    """The user and candidate ids of a PredictRequest or RecommendRequest.

    Raises :class:`IdError` for a request with both ``item_ids`` and
    ``item_keys``, with an empty or over-long string id, or with more than
    ``max_candidates`` item_keys (checked before any is hashed).
    """
    user = request.user_id
    if request.WhichOneof("user") == "user_key":
        _check_key("user_key", request.user_key)
        user = hash_id(request.user_key)
    keys = request.item_keys
    if not len(keys):
        items = list(request.item_ids)
        return RequestIds(user, items, items)
    if len(request.item_ids):
        raise IdError("send item_ids (integers) or item_keys (strings), not both")
    if len(keys) > max_candidates:
        raise IdError(f"{len(keys)} candidates, over the limit of {max_candidates} "
                      f"(serving.max_candidates)")
    sent = list(keys)
    if not all(sent) or max(map(len, sent)) > MAX_STRING:
        for i, key in enumerate(sent):  # name the first bad one
            _check_key(f"item_keys[{i}]", key)
    return RequestIds(user, list(map(hash_id, sent)), sent)


def scored_item(item: int | str, score: float) -> Any:
    """A ScoredItem naming ``item`` as it was sent: a str as item_key, an int as item_id."""
    if isinstance(item, str):
        return serving_pb2.ScoredItem(item_key=item, score=score)
    return serving_pb2.ScoredItem(item_id=item, score=score)

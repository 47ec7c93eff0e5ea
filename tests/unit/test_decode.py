"""Decoding events: valid ones round-trip, bad ones fail with the right kind and nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.decode import decode_csv_row, decode_json, decode_protobuf, decode_value, \
    encode_json, encode_protobuf
from ingest.event import Event
from ingest.ids import hash_id
from streamrec.errors import DecodeError

int64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8)
scalars = st.one_of(st.text(max_size=10), int64,
                    st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def events(draw: st.DrawFn) -> Event:
    type_ = draw(st.sampled_from(["example", "impression", "click"]))
    features = draw(st.dictionaries(names, st.lists(scalars, min_size=1, max_size=3),
                                    max_size=4))
    return Event(type=type_, user_id=draw(int64), item_id=draw(int64),
                 timestamp_ms=draw(st.integers(1, 2**62)), request_id=draw(st.text(max_size=8)),
                 event_id=draw(st.text(max_size=8)),
                 features={k: tuple(v) for k, v in features.items()},
                 label=float(draw(st.booleans())) if type_ == "example" else None)


def same_values(a: Event, b: Event) -> None:
    assert (a.type, a.user_id, a.item_id, a.timestamp_ms, a.request_id, a.event_id, a.label) == \
        (b.type, b.user_id, b.item_id, b.timestamp_ms, b.request_id, b.event_id, b.label)
    assert a.features.keys() == b.features.keys()
    for k in a.features:  # protobuf groups strings, ids, numbers; order within a type holds
        assert sorted(map(repr, a.features[k])) == sorted(map(repr, b.features[k]))


@settings(max_examples=150, deadline=None)
@given(events())
def test_json_and_protobuf_round_trip(event: Event) -> None:
    assert decode_json(encode_json(event)) == event
    same_values(decode_protobuf(encode_protobuf(event)), event)
    assert decode_value(encode_json(event)) == event  # auto-detects JSON
    same_values(decode_value(encode_protobuf(event)), event)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_an_event_or_a_decode_error_never_anything_else(raw: bytes) -> None:
    for fmt in ("auto", "json", "protobuf"):
        try:
            decode_value(raw, fmt)
        except DecodeError as e:
            assert e.kind in DecodeError.KINDS


VALID = {"type": "example", "label": 1, "user_id": 42, "item_id": "sku-7",
         "timestamp_ms": 1_700_000_000_000, "features": {"country": "fr", "tags": ["a", "b"],
                                                         "price": 9.5}}


def test_documented_json_form_decodes_with_string_ids_hashed() -> None:
    e = decode_json(json.dumps(VALID).encode())
    assert (e.type, e.user_id, e.item_id, e.label) == ("example", 42, hash_id("sku-7"), 1.0)
    assert e.features == {"country": ("fr",), "tags": ("a", "b"), "price": (9.5,)}


@pytest.mark.parametrize("change, kind, field", [
    ({"timestamp_ms": None}, "missing_field", "timestamp_ms"),
    ({"user_id": None}, "missing_field", "user_id"),
    ({"label": None}, "missing_field", "label"),
    ({"timestamp_ms": "yesterday"}, "wrong_type", "timestamp_ms"),
    ({"user_id": 1.5}, "wrong_type", "user_id"),
    ({"user_id": True}, "wrong_type", "user_id"),
    ({"features": ["a"]}, "wrong_type", "features"),
    ({"features": {"f": {"nested": 1}}}, "wrong_type", "f"),
    ({"label": 2}, "out_of_range", "label"),
    ({"timestamp_ms": -5}, "out_of_range", "timestamp_ms"),
    ({"item_id": 2**63}, "out_of_range", "item_id"),
    ({"features": {"f": list(range(2000))}}, "too_large", "f"),
])
def test_invalid_fields_are_named_with_their_kind(change: dict, kind: str, field: str) -> None:
    data = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(DecodeError) as info:
        decode_json(json.dumps(data).encode())
    assert info.value.kind == kind
    assert field in str(info.value)


def test_non_finite_numbers_and_oversized_records_are_rejected() -> None:
    raw = json.dumps({**VALID, "features": {"price": float("nan")}}).encode()
    with pytest.raises(DecodeError) as info:
        decode_json(raw)
    assert info.value.kind == "out_of_range"
    with pytest.raises(DecodeError) as info:
        decode_json(b"{" + b" " * (2 << 20) + b"}")
    assert info.value.kind == "too_large"
    with pytest.raises(DecodeError) as info:
        decode_json(b'{"type": "example"')
    assert info.value.kind == "malformed"


def test_csv_rows_use_f_dot_columns_and_pipes_for_lists() -> None:
    e = decode_csv_row({"type": "example", "user_id": "42", "item_id": "sku-7",
                        "timestamp_ms": "1700000000000", "label": "0", "request_id": "r",
                        "f.country": "fr", "f.tags": "a|b", "f.price": "9.5", "f.n": "3"})
    assert (e.user_id, e.item_id, e.label, e.timestamp_ms) == (42, hash_id("sku-7"), 0.0,
                                                               1_700_000_000_000)
    assert e.features == {"country": ("fr",), "tags": ("a", "b"), "price": (9.5,), "n": (3,)}
    with pytest.raises(DecodeError) as info:
        decode_csv_row({"type": "example", "user_id": "1", "item_id": "2", "label": "1",
                        "timestamp_ms": "soon"})
    assert info.value.kind == "wrong_type"


def test_auto_decodes_a_protobuf_event_whose_bytes_look_like_json() -> None:
    # Found by the round-trip property: a protobuf Event can start with bytes
    # that read as whitespace then "{", which "auto" once took for JSON.
    event = Event(type="impression", user_id=0, item_id=0, timestamp_ms=128, request_id="",
                  event_id=" {0\x80\x80\x80", features={}, label=None, sample_rate=1.0)
    raw = encode_protobuf(event)
    assert raw.lstrip()[:1] == b"{"
    same_values(decode_value(raw), event)
    # A JSON-looking record that is neither still reports the JSON error.
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_value(b'{"type": ')

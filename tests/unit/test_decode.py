"""Decoding events: valid ones round-trip, bad ones fail with the right kind and nothing else."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.ingest.decode import decode_csv_row, decode_json, decode_protobuf, decode_value, \
    encode_json, encode_protobuf
from streamrec.ingest.event import Event
from streamrec.ingest.ids import hash_id, to_id
from streamrec.ingest.source import MemorySource
from streamrec.client import to_feature_values
from streamrec.errors import DecodeError

int64 = st.integers(-(2**63), 2**63 - 1)
PAST_MS = 1_700_000_000_000  # November 2023
names = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8)
scalars = st.one_of(st.text(max_size=10), int64,
                    st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def events(draw: st.DrawFn) -> Event:
    type_ = draw(st.sampled_from(["example", "impression", "click"]))
    features = draw(st.dictionaries(names, st.lists(scalars, min_size=1, max_size=3),
                                    max_size=4))
    return Event(type=type_, user_id=draw(int64), item_id=draw(int64),
                 # Up to the present: the decoder refuses times over a day ahead of the clock.
                 timestamp_ms=draw(st.integers(1, PAST_MS)), request_id=draw(st.text(max_size=8)),
                 event_id=draw(st.text(max_size=8)),
                 features={k: tuple(v) for k, v in features.items()},
                 label=float(draw(st.booleans())) if type_ == "example" else None,
                 # (float32 on the wire: scores exact in it)
                 served_score=draw(st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                 model_version=draw(st.none() | st.integers(0, 2**63 - 1)))


def same_values(a: Event, b: Event) -> None:
    assert (a.type, a.user_id, a.item_id, a.timestamp_ms, a.request_id, a.event_id, a.label,
            a.served_score, a.model_version) == \
        (b.type, b.user_id, b.item_id, b.timestamp_ms, b.request_id, b.event_id, b.label,
         b.served_score, b.model_version)
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
    ({"features": {"f": [[1]]}}, "wrong_type", "f"),
    ({"features": {"f": [{"a": 1}]}}, "wrong_type", "f"),
    ({"features": {"f": {"a": {"b": {"c": {"d": {"e": 1}}}}}}}, "wrong_type", "f.a.b.c.d"),
    ({"timestamp_ms": float("inf")}, "wrong_type", "timestamp_ms"),
    ({"label": "yes"}, "wrong_type", "label"),
    ({"label": 2}, "out_of_range", "label"),
    ({"timestamp_ms": -5}, "out_of_range", "timestamp_ms"),
    ({"item_id": 2**63}, "out_of_range", "item_id"),
    ({"features": {"f": list(range(2000))}}, "too_large", "f"),
    ({"served_score": 1.5}, "out_of_range", "served_score"),
    ({"served_score": "high"}, "wrong_type", "served_score"),
    ({"model_version": -1}, "out_of_range", "model_version"),
    ({"model_version": 2.5}, "wrong_type", "model_version"),
])
def test_invalid_fields_are_named_with_their_kind(change: dict, kind: str, field: str) -> None:
    data = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(DecodeError) as info:
        decode_json(json.dumps(data).encode())
    assert info.value.kind == kind
    assert field in str(info.value)


def test_what_other_tools_write_for_a_value_is_read_as_that_value() -> None:
    # json.dumps of a pandas row: NaN for a missing number, floats for an
    # integer column with gaps, booleans; Python's time.time() * 1000.
    raw = json.dumps({**VALID, "label": True, "user_id": 42.0,
                      "timestamp_ms": 1_700_000_000_000.75,
                      "features": {"price": float("nan"), "age": None, "mobile": True,
                                   "new": False, "tags": ["a", None, float("nan"), "b"],
                                   "ctx": {"os": "ios", "screen": {"w": 390}}}}).encode()
    e = decode_json(raw)
    assert (e.label, e.user_id, e.timestamp_ms) == (1.0, 42, 1_700_000_000_000)
    assert e.features == {"mobile": (1,), "new": (0,), "tags": ("a", "b"),
                          "ctx.os": ("ios",), "ctx.screen.w": (390,)}
    assert decode_json(json.dumps({**VALID, "label": False}).encode()).label == 0.0
    # A long text (a title, a URL with its query) is a feature value like a short one.
    text = "word " * 2000
    long = decode_json(json.dumps({**VALID, "features": {"title": text, "tags": [text]}}).encode())
    assert long.features == {"title": (text,), "tags": (text,)}


def test_the_client_sends_booleans_as_the_ids_events_are_read_as() -> None:
    event = decode_json(json.dumps({**VALID, "features": {"m": [True, False]}}).encode())
    assert tuple(to_feature_values([True, False]).ids) == event.features["m"] == (1, 0)
    assert tuple(to_feature_values(True).ids) == (1,)


def test_oversized_and_malformed_records_are_rejected() -> None:
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


# JSON's escapes can spell lone surrogates ("\\ud800"), which are not text: one
# must cost its own record, never the poll it arrived in.
@pytest.mark.parametrize("change, field", [
    ({"type": "ex\ud800"}, "type"),
    ({"user_id": "\ud800"}, "user_id"),
    ({"item_id": "sku-\udfff"}, "item_id"),
    ({"request_id": "r\ud800"}, "request_id"),
    ({"event_id": "\udc80"}, "event_id"),
    ({"features": {"country\ud800": "fr"}}, "feature name"),
    ({"features": {"country": ["fr", "\udc80"]}}, "country"),
])
def test_lone_surrogates_are_malformed_naming_the_field(change: dict, field: str) -> None:
    raw = json.dumps({**VALID, **change}).encode()  # json.dumps writes them as \\uXXXX
    with pytest.raises(DecodeError) as info:
        decode_json(raw)
    assert info.value.kind == "malformed"
    assert field in str(info.value) and "surrogate" in str(info.value)


def test_a_poll_with_a_lone_surrogate_keeps_the_good_events() -> None:
    good = json.dumps(VALID).encode()
    bad = json.dumps({**VALID, "user_id": "\ud800"}).encode()
    batch = MemorySource([good, bad, good]).poll(10, 0)
    assert [e.user_id for e in batch.events] == [42, 42]
    assert [(d.kind, d.origin) for d in batch.dead_letters] == [("malformed", "memory:1")]
    # The same record handed over as text that holds a real lone surrogate.
    raw_text = json.dumps({**VALID, "user_id": "\ud800"}, ensure_ascii=False)
    text = MemorySource([good.decode(), raw_text]).poll(10, 0)
    assert len(text.events) == 1 and [d.kind for d in text.dead_letters] == ["malformed"]


def test_string_ids_hash_as_blake2b_of_utf8_and_lone_surrogates_hash_too() -> None:
    # Ids are stored in tables and checkpoints: valid text must keep its id.
    for text in ("sku-7", "café", "東京", "🎧"):
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        assert hash_id(text) == int.from_bytes(digest, "little", signed=True)
    # An Event built by hand (no decoder) may hold one; batching must not crash.
    assert to_id("\udc80") == hash_id("\udc80") != hash_id("\udc81")


def test_timestamps_more_than_a_day_ahead_are_out_of_range() -> None:
    now_ms = int(time.time() * 1000)
    soon = decode_json(json.dumps({**VALID, "timestamp_ms": now_ms + 3_600_000}).encode())
    assert soon.timestamp_ms == now_ms + 3_600_000  # clocks disagree by minutes, not days
    for ts in (now_ms * 1000, now_ms + 2 * 86_400_000):  # microseconds; two days ahead
        with pytest.raises(DecodeError) as info:
            decode_json(json.dumps({**VALID, "timestamp_ms": ts}).encode())
        assert info.value.kind == "out_of_range"
        assert "timestamp_ms" in str(info.value)
        assert "more than a day ahead" in str(info.value)


def test_auto_reads_json_after_a_byte_order_mark() -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(VALID).encode()
    assert decode_value(raw) == decode_json(json.dumps(VALID).encode())


@pytest.mark.parametrize("raw", [b"[" + json.dumps(VALID).encode() + b"]", b' "an event"'])
def test_auto_reports_the_json_error_of_arrays_and_strings(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="must be a JSON object") as info:
        decode_value(raw)
    assert info.value.kind == "wrong_type"


def test_csv_text_with_underscores_or_non_ascii_digits_stays_text() -> None:
    row = {"type": "example", "label": "1", "user_id": "10_20", "item_id": "\u0663",
           "timestamp_ms": "1700000000000", "f.shop": "20_21", "f.n": "-3", "f.price": "9.5",
           "f.big": "1e3", "f.padded": " 7"}
    e = decode_csv_row(row)
    # As in JSON: the string "10_20" is hashed, not read as the integer 1020.
    assert (e.user_id, e.item_id) == (hash_id("10_20"), hash_id("\u0663"))
    assert e.features == {"shop": ("20_21",), "n": (-3,), "price": (9.5,), "big": (1000.0,),
                          "padded": (7,)}
    assert decode_csv_row({**row, "user_id": "1020"}).user_id == 1020


@pytest.mark.parametrize("literal", ["9999999999999999999", "18446744073709551616",
                                     "123456789012345678901234567890", "-9223372036854775809"])
def test_integer_literals_beyond_int64_are_out_of_range_not_floats(literal: str) -> None:
    # The fast JSON parser reads integers beyond 64 bits as floats; a too-big
    # id must still be refused, never turned into a number.
    for field in ('"user_id": ' + literal, '"features": {"shop": ' + literal + '}'):
        raw = ('{"type": "example", "user_id": 1, "item_id": 2, "timestamp_ms": 5, '
               '"label": 1, ' + field + '}').encode()
        with pytest.raises(DecodeError) as info:
            decode_json(raw)
        assert info.value.kind == "out_of_range" and literal in str(info.value)


def test_encoded_events_stay_as_small_as_their_utf8_text() -> None:
    # ASCII escapes (\u00e9: 6 bytes for 2) pushed events that decode within
    # MAX_EVENT_BYTES over it, and over a Kafka message, when replayed.
    from streamrec.ingest.decode import MAX_EVENT_BYTES, encode_json

    tags = ["é" * 400] * 1000
    raw = json.dumps({**VALID, "features": {"tags": tags}}, ensure_ascii=False).encode()
    assert len(raw) < MAX_EVENT_BYTES
    event = decode_json(raw)
    encoded = encode_json(event)
    assert len(encoded) <= len(raw) and decode_json(encoded) == event


def test_an_events_changed_copy_changes_only_the_named_fields() -> None:
    event = Event("impression", 1, 2, 3, request_id="r", features={"tag": ("a",)})
    copy = event._replace(type="example", label=1.0)
    assert type(copy) is Event and copy == Event("example", 1, 2, 3, request_id="r",
                                                 features={"tag": ("a",)}, label=1.0)
    assert event.type == "impression" and event.label is None
    with pytest.raises(ValueError, match=r"unexpected field names: \['labels'\]"):
        event._replace(label=1.0, labels=1.0)

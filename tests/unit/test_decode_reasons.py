"""Dead-letter reasons with value_format="auto" name the producer's own format."""

from __future__ import annotations

import json

import pytest

from streamrec.ingest.decode import decode_value, encode_protobuf
from streamrec.ingest.event import Event
from streamrec.ingest.source import MemorySource

VALID = {"type": "example", "label": 1, "user_id": 42, "item_id": 7,
         "timestamp_ms": 1_700_000_000_000}


@pytest.mark.parametrize("raw, detail", [
    (b"not json", "Expecting value"),
    (b"type=click user=42", "Expecting value"),
    (b"x{'type': 'click'}", "Expecting value"),
    (b"caf\xe9", "can't decode byte 0xe9"),  # Latin-1 text
    (b"42\n", "must be a JSON object"),
])
def test_text_that_is_not_json_is_reported_as_json(raw: bytes, detail: str) -> None:
    batch = MemorySource([json.dumps(VALID).encode(), raw]).poll(10, 0)
    assert len(batch.events) == 1
    [letter] = batch.dead_letters
    assert "JSON" in letter.reason and detail in letter.reason
    assert "protobuf" not in letter.reason


def test_binary_values_still_decode_or_are_reported_as_protobuf() -> None:
    event = Event(type="click", user_id=-5, item_id=9, timestamp_ms=1_700_000_000_000,
                  request_id="r1", event_id="e1", features={"country": ("fr",)}, label=None,
                  sample_rate=1.0)
    assert decode_value(encode_protobuf(event)).item_id == 9
    batch = MemorySource([b"\x08\x01\xff\xff"]).poll(10, 0)
    assert "protobuf" in batch.dead_letters[0].reason

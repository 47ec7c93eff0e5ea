"""The string-id hash is part of the API: its test vectors, and the docs that state them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamrec.ingest.ids import hash_id

ROOT = Path(__file__).resolve().parents[2]

# string -> (BLAKE2b digest of size 8, hex; the id), as README.md and
# protos/serving.proto give them to clients in other languages.
VECTORS = {
    "alice": ("4deaec0cce54da89", -8513398901633652147),
    "item-42": ("ea17fcf7348a350d", 951818856362153962),
    "42": ("57b43cf02666687a", 8820412187630416983),
    "日本": ("e83335cfe1549b3a", 4223062404410717160),
}


@pytest.mark.parametrize("text", VECTORS)
def test_hash_id_reproduces_the_published_vectors(text: str) -> None:
    digest, want = VECTORS[text]
    assert hash_id(text) == want
    # The id is the digest's bytes read little-endian, signed.
    assert int.from_bytes(bytes.fromhex(digest), "little", signed=True) == want


def test_readme_and_proto_publish_the_same_vectors() -> None:
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{16})` \| (-?\d+) \|$", readme, re.M)
    assert {t: (d, int(i)) for t, d, i in rows} == VECTORS
    proto = ROOT.joinpath("protos", "serving.proto").read_text(encoding="utf-8")
    lines = re.findall(r'^//\s+"([^"]+)"\s+-> ([0-9a-f]{16}) ->\s+(-?\d+)$', proto, re.M)
    assert {t: (d, int(i)) for t, d, i in lines} == VECTORS

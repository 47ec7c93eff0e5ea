"""Turning categorical values into raw 64-bit ids, the same way in every tier."""

from __future__ import annotations

import functools
import hashlib

__all__ = ["hash_id", "to_id", "INT64_MIN", "INT64_MAX"]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


# Categorical strings repeat (countries, categories, hours as text): a bounded
# memo turns a BLAKE2b digest (~1.5 us) into a dict hit for the common values.
@functools.lru_cache(maxsize=1 << 16)
def hash_id(value: str) -> int:
    """A stable signed 64-bit id for a string (BLAKE2b, 8 bytes).

    With 64-bit ids a collision among a billion distinct strings has
    probability ~3e-2 / 1e3; tables keyed by these ids never add collisions
    of their own.
    """
    # surrogatepass: a lone surrogate (which the decoder refuses, but a caller
    # may build an Event by hand) hashes instead of raising; valid text
    # encodes exactly as plain UTF-8, so no id changes.
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def to_id(value: str | int | float) -> int:
    """The raw id of one categorical value: integers as they are, others hashed."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"id {value} does not fit in a signed 64-bit integer")
        return value
    if isinstance(value, float):
        if value.is_integer() and INT64_MIN <= value <= INT64_MAX:
            return int(value)
        return hash_id(repr(value))
    return hash_id(value)

"""The sync port's bearer token check."""

from __future__ import annotations

import hmac

import grpc

__all__ = ["expected_header", "authenticated"]


def expected_header(token: str) -> bytes:
    """The ``authorization`` value a push must carry (empty: no token required)."""
    return f"Bearer {token}".encode() if token else b""


def authenticated(context: grpc.ServicerContext, expected: bytes) -> bool:
    """Whether the call carries ``expected`` (compared in constant time); True if none is."""
    if not expected:
        return True
    given = dict(context.invocation_metadata()).get("authorization", "")
    return hmac.compare_digest(str(given).encode(), expected)

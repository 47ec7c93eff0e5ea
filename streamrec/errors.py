"""One error tree for streamrec.

Every error raised on purpose derives from :class:`StreamrecError`; each subclass
also inherits the builtin it refines, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "StreamrecError",
    "ConfigError",
    "DecodeError",
    "SyncError",
    "VersionGapError",
    "StaleVersionError",
    "NonFiniteError",
    "NotReadyError",
    "CheckpointError",
]


class StreamrecError(Exception):
    """Root of every error streamrec raises on purpose."""


class ConfigError(StreamrecError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class DecodeError(StreamrecError, ValueError):
    """An event could not be decoded or failed validation.

    ``kind`` says which way, for dead-letter routing and metrics:
    ``malformed`` (not JSON/protobuf at all), ``missing_field``,
    ``wrong_type``, ``out_of_range``, ``too_large`` or ``unknown_type`` (an
    event type that is neither example, impression nor a configured action).
    """

    KINDS = ("malformed", "missing_field", "wrong_type", "out_of_range", "too_large",
             "unknown_type")

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind if kind in self.KINDS else "malformed"


class SyncError(StreamrecError, RuntimeError):
    """Parameter sync between trainer and serving failed."""


class VersionGapError(SyncError):
    """A delta's base version does not match the replica's version."""

    def __init__(self, replica_version: int, base_version: int) -> None:
        super().__init__(
            f"delta base_version={base_version} does not match replica version "
            f"{replica_version}; a full snapshot is required"
        )
        self.replica_version = replica_version
        self.base_version = base_version


class StaleVersionError(SyncError):
    """A push would take a replica to a version not above the one it holds (versions only grow)."""

    def __init__(self, replica_version: int, version: int) -> None:
        super().__init__(
            f"version {version} is not above the replica's version {replica_version}: a "
            f"replica never goes back (a restarted trainer publishes above what replicas hold)")
        self.replica_version = replica_version
        self.version = version


class NonFiniteError(SyncError):
    """Parameters, or the scores computed from them, hold NaN or infinite values."""


class NotReadyError(StreamrecError, RuntimeError):
    """Serving has no model yet (gRPC FAILED_PRECONDITION)."""


class CheckpointError(StreamrecError, RuntimeError):
    """A checkpoint could not be written or read."""

"""Where the publisher sends deltas: a serving replica over gRPC, or one in memory.

A :class:`DeltaSink` is one replica. ``push`` raises
:class:`~streamrec.errors.VersionGapError` when the replica's version is not
the delta's base (the publisher then sends a full snapshot) and
:class:`~streamrec.errors.SyncError` on any other failure.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from streamrec.protos import sync_pb2, sync_pb2_grpc
from streamrec.config import MAX_CHUNK_BYTES, SYNC_MAX_MESSAGE_BYTES
from streamrec.errors import SyncError, VersionGapError
from streamrec.model.delta import ParameterDelta, encode_chunks


class DeltaApplier(Protocol):
    """What :class:`MemoryDeltaSink` pushes to: a serving replica in this process."""

    @property
    def version(self) -> int: ...

    def apply(self, delta: ParameterDelta) -> None: ...

__all__ = ["DeltaSink", "GrpcDeltaSink", "MemoryDeltaSink"]


class DeltaSink(Protocol):
    def version(self) -> int: ...
    def push(self, delta: ParameterDelta) -> int: ...
    def close(self) -> None: ...


class GrpcDeltaSink:
    """Pushes deltas to a replica's sync port as a client stream of bounded chunks."""

    def __init__(self, address: str, token: str = "", max_chunk_bytes: int = 1 << 20,
                 timeout_s: float = 10.0) -> None:
        self.address = address
        self.max_chunk_bytes = max_chunk_bytes
        self.timeout_s = timeout_s
        limit = max_chunk_bytes + (SYNC_MAX_MESSAGE_BYTES - MAX_CHUNK_BYTES)  # + framing room
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # A replica that restarts is back within seconds and gets its
            # snapshot at the next round: gRPC's default reconnect backoff grows
            # to two minutes, which kept a restarted replica empty that long.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000)])
        self._stub = sync_pb2_grpc.ParameterSyncStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _error(self, e: grpc.RpcError, what: str) -> SyncError:
        return SyncError(f"{what} {self.address}: {e.code().name}: {e.details()}")

    def version(self) -> int:
        try:
            reply = self._stub.GetVersion(sync_pb2.VersionRequest(), metadata=self._metadata,
                                          timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise self._error(e, "version of") from e
        return int(reply.version)

    def push(self, delta: ParameterDelta) -> int:
        chunks = encode_chunks(delta, self.max_chunk_bytes)
        try:
            ack = self._stub.Push(chunks, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise VersionGapError(-1, delta.base_version) from e
            raise self._error(e, "push to") from e
        return int(ack.version)

    def close(self) -> None:
        self._channel.close()


class MemoryDeltaSink:
    """Applies deltas straight to an in-process replica (tests, single-process setups)."""

    def __init__(self, replica: DeltaApplier) -> None:
        self.replica = replica
        self.pushed = 0

    def version(self) -> int:
        return self.replica.version

    def push(self, delta: ParameterDelta) -> int:
        self.replica.apply(delta)
        self.pushed += 1
        return self.replica.version

    def close(self) -> None:
        pass

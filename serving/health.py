"""The gRPC health service (``grpc.health.v1.Health``): Check, List and Watch.

grpcio-health-checking's servicer (1.85, the latest) answers Check and Watch
but not List (UNIMPLEMENTED, though reflection advertises it), and its Watch
streams a message on every ``set``, changed or not: a replica sets SERVING on
each delta it applies, so watchers got one a second. This one answers List
and sends a Watch message only when a status changes, as the protocol asks.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]


class HealthServicer(health.HealthServicer):
    """Statuses by service name ("" = the whole process); ``set`` notifies on change only."""

    def set(self, service: str, status: Any) -> None:
        with self._lock:
            if self._server_status.get(service) == status:
                return
            super().set(service, status)

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Every registered service with its status (a snapshot)."""
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()})

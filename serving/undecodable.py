"""Requests that cannot be decoded are the caller's error: INVALID_ARGUMENT.

grpcio answers a request its deserializer refuses with ``INTERNAL:
Exception deserializing request!``, blaming the server for the caller's
bytes. :class:`InvalidArgumentOnUndecodable`, a server interceptor, gives
every method of a server (those registered later too: health, reflection)
a deserializer that never raises: what it cannot parse reaches the method
as a marker, and the call ends in ``INVALID_ARGUMENT`` naming the message
type before the method runs (for streamed requests, at the bad message).

The wrapped handler of each method is built once and cached, so the normal
path costs a dict lookup and a type test per call
(``benchmarks/serving_latency.py``, arm ``grpc-undecodable-guard``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

__all__ = ["InvalidArgumentOnUndecodable"]


class _Undecodable:
    """Stands for a request message that could not be parsed."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString, bound to its class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as e:  # protobuf's DecodeError, or whatever a custom one raises
            return _Undecodable(f"{type(e).__name__}: {e}")
    return decode


class InvalidArgumentOnUndecodable(grpc.ServerInterceptor):
    """Server interceptor: an undecodable request ends in INVALID_ARGUMENT.

    ``on_invalid(method)`` is called with the full method name
    (``/package.Service/Method``) of each such call, for metrics.
    """

    def __init__(self, on_invalid: Callable[[str], None] | None = None) -> None:
        self._on_invalid = on_invalid
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method  # type: ignore[attr-defined]
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _refuse(self, method: str, message: str, bad: _Undecodable,
                context: grpc.ServicerContext) -> None:
        if self._on_invalid is not None:
            self._on_invalid(method)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request is not a valid {message} message ({bad.error})")

    def _wrap(self, method: str, handler: Any) -> Any:
        message = _message_name(handler.request_deserializer)
        refuse = self._refuse
        changes: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
        if not handler.request_streaming:
            name = "unary_stream" if handler.response_streaming else "unary_unary"
            inner = getattr(handler, name)

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if type(request) is _Undecodable:
                    refuse(method, message, request, context)
                return inner(request, context)
            changes[name] = unary
        else:
            name = "stream_stream" if handler.response_streaming else "stream_unary"
            inner = getattr(handler, name)

            def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                for request in requests:
                    if type(request) is _Undecodable:
                        refuse(method, message, request, context)
                    yield request

            def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return inner(checked(requests, context), context)
            changes[name] = streaming
        return handler._replace(**changes)

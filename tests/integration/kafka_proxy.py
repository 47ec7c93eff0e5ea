"""TCP proxies in front of a Kafka broker.

:class:`AnswerDroppingProxy` loses the answers to chosen Produce requests: the
broker has written the request's records when its answer arrives; the proxy
then closes the client's connection instead of relaying it, as a network
failure after the write would. The client must retry without writing the
records twice. :class:`TlsProxy` ends TLS in front of a broker that has none.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

_PRODUCE = 0  # the Produce request's api key


class _Proxy(ABC):
    """Listens on ``port`` (127.0.0.1) and gives each client to :meth:`_serve`
    on a thread of its own; ``_upstream`` is the broker's port there."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()
        for s in sockets:
            _close(s)
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._start(self._serve, client)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _connected(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets += sockets

    @abstractmethod
    def _serve(self, client: socket.socket) -> None:
        """Relay between ``client`` and the broker until either side closes."""


class AnswerDroppingProxy(_Proxy):
    """Forwards to the broker, except that the answers to the Produce requests
    numbered in ``drop`` (counted from 1 across connections) are dropped, each
    closing its client connection.
    """

    def __init__(self, port: int, upstream_port: int, drop: set[int]) -> None:
        self.dropped = 0
        self._drop = drop
        self._produced = 0
        super().__init__(port, upstream_port)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:  # the broker is not up yet
            client.close()
            return
        self._connected(client, upstream)
        doomed: set[int] = set()  # correlation ids whose answers are dropped
        self._start(self._answers, upstream, client, doomed)
        self._requests(client, upstream, doomed)

    def _requests(self, client: socket.socket, upstream: socket.socket, doomed: set[int]
                  ) -> None:
        while (frame := _frame(client)) is not None:
            api_key, _, correlation_id = struct.unpack_from(">hhi", frame, 4)
            if api_key == _PRODUCE:
                with self._lock:
                    self._produced += 1
                    if self._produced in self._drop:
                        doomed.add(correlation_id)
            if not _send(upstream, frame):
                break
        _close(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, doomed: set[int]
                 ) -> None:
        while (frame := _frame(upstream)) is not None:
            (correlation_id,) = struct.unpack_from(">i", frame, 4)
            if correlation_id in doomed:
                self.dropped += 1
                break
            if not _send(client, frame):
                break
        _close(client)
        _close(upstream)


def _frame(s: socket.socket) -> bytes | None:
    """One size-prefixed Kafka frame (the size included), or None at the end."""
    head = _exactly(s, 4)
    if head is None:
        return None
    body = _exactly(s, struct.unpack(">i", head)[0])
    return None if body is None else head + body


def _exactly(s: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = s.recv(n - len(out))
        except OSError:
            return None
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _send(s: socket.socket, data: bytes) -> bool:
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class TlsProxy(_Proxy):
    """Ends TLS with ``context`` and forwards the bytes to the broker in clear: a
    broker that clients reach over TLS only, as most production clusters are
    (Tansu's own TLS listener does not complete a handshake)."""

    def __init__(self, port: int, upstream_port: int, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(port, upstream_port)

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            secure = self._context.wrap_socket(client, server_side=True)
            secure.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:  # a failed handshake (an untrusted client), or no broker yet
            _close(client)
            return
        self._connected(secure, upstream)
        self._start(_pipe, upstream, secure)
        _pipe(secure, upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    while True:
        try:
            chunk = source.recv(65536)
        except OSError:
            chunk = b""
        if not chunk or not _send(sink, chunk):
            break
    _close(sink)
    _close(source)

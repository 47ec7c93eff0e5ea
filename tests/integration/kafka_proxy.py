"""A TCP proxy in front of a Kafka broker that loses the answers to chosen Produce requests.

The broker has written the request's records when its answer arrives; the
proxy then closes the client's connection instead of relaying it, as a
network failure after the write would. The client must retry without
writing the records twice.
"""

from __future__ import annotations

import socket
import struct
import threading

_PRODUCE = 0  # the Produce request's api key


class AnswerDroppingProxy:
    """Listens on ``port`` and forwards to ``upstream_port`` (both on 127.0.0.1).

    The answers to the Produce requests numbered in ``drop`` (counted from 1
    across connections) are dropped, each closing its client connection.
    """

    def __init__(self, port: int, upstream_port: int, drop: set[int]) -> None:
        self.dropped = 0
        self._upstream = upstream_port
        self._drop = drop
        self._produced = 0
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
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:  # the broker is not up yet
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            doomed: set[int] = set()  # correlation ids whose answers are dropped
            for target in (lambda: self._requests(client, upstream, doomed),
                           lambda: self._answers(upstream, client, doomed)):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)

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

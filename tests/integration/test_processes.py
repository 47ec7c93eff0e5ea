"""The integration tests' own helpers: waiting on a server leaks nothing."""

from __future__ import annotations

import gc
import http.server
import threading
import warnings
from collections.abc import Iterator

import pytest

from tests.integration.processes import http_get, wait_until


@pytest.fixture
def starting_server() -> Iterator[str]:
    """A local HTTP server that answers 503 three times, then 200 (as Prometheus starting)."""
    answers = iter([503, 503, 503])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = next(answers, 200)
            self.send_response(status)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n" if status == 200 else b"no\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/-/ready"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_waiting_through_error_statuses_leaves_no_socket_open(starting_server: str) -> None:
    # The sockets of 503 answers were closed only by a later cyclic garbage
    # collection, whose ResourceWarning failed whatever test ran then.
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert wait_until("the server to be ready", lambda: http_get(starting_server),
                          timeout_s=30, interval_s=0.01) == b"ok\n"
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaks

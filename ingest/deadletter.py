"""Dead-letter sinks: where rejected records go, with the reason, instead of crashing."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from streamrec.ingest.source import DeadLetter

if TYPE_CHECKING:
    from streamrec.ingest.metrics import IngestMetrics

__all__ = ["DeadLetterSink", "MemoryDeadLetterSink", "FileDeadLetterSink", "KafkaDeadLetterSink",
           "dead_letter_to_dict"]

log = logging.getLogger(__name__)

# Room in one produce request for everything but the value and the headers: the
# record batch header (61 bytes) and the record's varint fields (at most ~60).
_RECORD_OVERHEAD = 1024


class DeadLetterSink(Protocol):
    def put(self, letters: list[DeadLetter]) -> None: ...

    def flush(self) -> None:
        """Return once every letter put so far is durable (or counted as dropped).

        The training loop calls it before a checkpoint: the checkpoint's
        offsets pass the rejected records, and a restart never reads them again.
        Raises when that cannot be known (the checkpoint is then skipped).
        """

    def close(self) -> None: ...


def dead_letter_to_dict(letter: DeadLetter) -> dict[str, str]:
    """JSON-ready form: the raw record as text when it is UTF-8, else base64."""
    out = {"kind": letter.kind, "reason": letter.reason, "origin": letter.origin}
    try:
        out["raw"] = letter.raw.decode("utf-8")
    except UnicodeDecodeError:
        out["raw_base64"] = base64.b64encode(letter.raw).decode("ascii")
    return out


class MemoryDeadLetterSink:
    """Keeps the newest ``limit`` letters (tests, evaluate)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.letters: list[DeadLetter] = []
        self.total = 0

    def put(self, letters: list[DeadLetter]) -> None:
        self.total += len(letters)
        self.letters.extend(letters)
        del self.letters[: max(0, len(self.letters) - self.limit)]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FileDeadLetterSink:
    """Appends one JSON object per letter to a JSONL file, flushed on every put.

    :meth:`flush` also syncs the file to disk (before each checkpoint).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def put(self, letters: list[DeadLetter]) -> None:
        with self._lock:
            for letter in letters:
                self._file.write(json.dumps(dead_letter_to_dict(letter)) + "\n")
            self._file.flush()

    def flush(self) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


class KafkaDeadLetterSink:
    """Produces each rejected record to a dead-letter topic, with the reason in headers.

    Value: the raw bytes (cut when too large, below); headers: ``kind``, ``reason``
    (first 1 KiB), ``origin``.

    A dead letter that cannot be forwarded never stops training (the records
    around it would never be trained or committed, and every restart would fail
    on it again): a record too large for one produce request keeps its first
    bytes and gains a ``truncated_from`` header holding its original size; one
    the client or the broker refuses is logged and counted in
    ``streamrec_ingest_dead_letters_dropped_total`` (and :attr:`dropped`).
    """

    def __init__(self, bootstrap_servers: list[str], topic: str,
                 metrics: IngestMetrics | None = None,
                 max_request_size: int = 1 << 20, flush_timeout_s: float = 30.0,
                 security: Mapping[str, Any] | None = None) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.max_request_size = max_request_size
        self.flush_timeout_s = flush_timeout_s
        self.dropped = 0
        self._metrics = metrics
        self._lock = threading.Lock()  # _drop also runs on the producer's I/O thread
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                       linger_ms=50, max_request_size=max_request_size,
                                       **(security or {}))

    def put(self, letters: list[DeadLetter]) -> None:
        from kafka.errors import KafkaError

        for letter in letters:
            headers = [("kind", letter.kind.encode()), ("reason", letter.reason.encode()[:1024]),
                       ("origin", letter.origin.encode())]
            value = self._fit(letter.raw, headers)
            try:
                future = self._producer.send(self.topic, value=value, headers=headers)
            except KafkaError as e:
                self._drop(letter, e)
            else:
                future.add_errback(self._drop, letter)

    def _fit(self, raw: bytes, headers: list[tuple[str, bytes]]) -> bytes:
        """``raw``, or its first bytes when the record would exceed one produce request.

        Appends a ``truncated_from`` header (the original length) to ``headers``
        when it cuts.
        """
        # The headers, plus the truncated_from header a cut adds (its value: <= 20 digits).
        header_bytes = sum(len(k) + len(v) for k, v in headers) + len("truncated_from") + 20
        budget = max(0, self.max_request_size - _RECORD_OVERHEAD - header_bytes)
        if len(raw) <= budget:
            return raw
        headers.append(("truncated_from", str(len(raw)).encode()))
        return raw[:budget]

    def _drop(self, letter: DeadLetter, error: Exception) -> None:
        """Log and count a letter that could not be forwarded."""
        log.warning("dead letter from %s (%s, %d bytes) not forwarded to %s: %s",
                    letter.origin, letter.kind, len(letter.raw), self.topic, error)
        with self._lock:
            self.dropped += 1
        if self._metrics is not None:
            self._metrics.dead_letters_dropped.inc()

    def flush(self) -> None:
        """Wait for the broker's acknowledgement (or refusal) of every letter sent.

        Raises ``kafka.errors.KafkaTimeoutError`` after ``flush_timeout_s``.
        """
        self._producer.flush(timeout=self.flush_timeout_s)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

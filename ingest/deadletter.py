"""Dead-letter sinks: where rejected records go, with the reason, instead of crashing."""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Protocol

from ingest.source import DeadLetter

__all__ = ["DeadLetterSink", "MemoryDeadLetterSink", "FileDeadLetterSink", "KafkaDeadLetterSink",
           "dead_letter_to_dict"]


class DeadLetterSink(Protocol):
    def put(self, letters: list[DeadLetter]) -> None: ...
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

    def close(self) -> None:
        pass


class FileDeadLetterSink:
    """Appends one JSON object per letter to a JSONL file, flushed on every put."""

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

    def close(self) -> None:
        with self._lock:
            self._file.close()


class KafkaDeadLetterSink:
    """Produces each rejected record, unchanged, to a dead-letter topic, with the reason in headers.

    Value: the raw bytes; headers: ``kind``, ``reason`` (first 1 KiB), ``origin``.
    """

    def __init__(self, bootstrap_servers: list[str], topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                       linger_ms=50)

    def put(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            headers = [("kind", letter.kind.encode()), ("reason", letter.reason.encode()[:1024]),
                       ("origin", letter.origin.encode())]
            self._producer.send(self.topic, value=letter.raw, headers=headers)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

"""Events from a JSONL or CSV file, in file order (``evaluate`` and replays)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Iterator, Mapping

from ingest.decode import decode_csv_row
from ingest.event import Event
from ingest.metrics import IngestMetrics
from ingest.source import SourceBatch, decode_records

__all__ = ["FileSource"]


class FileSource:
    """Reads ``path`` (``.csv`` or JSON lines) lazily; bad lines become dead letters.

    The offset is the number of data lines consumed, under the key
    ``("file:<path>", 0)``; ``seek`` skips that many lines.
    """

    def __init__(self, path: str | os.PathLike[str], value_format: str = "auto",
                 metrics: IngestMetrics | None = None) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        self._csv = self.path.endswith(".csv")
        self._format = "json" if value_format == "auto" else value_format
        self._metrics = metrics
        self._key = (f"file:{self.path}", 0)
        self._text: io.TextIOWrapper | None = None
        self._consumed = 0
        self._exhausted = False
        self._lines = self._csv_lines() if self._csv else self._json_lines()

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def _json_lines(self) -> Iterator[tuple[int, bytes]]:
        for number, line in enumerate(self._file, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")

    def _csv_lines(self) -> Iterator[tuple[int, bytes]]:
        self._text = io.TextIOWrapper(self._file, encoding="utf-8", errors="replace", newline="")
        reader = csv.DictReader(self._text)
        for row in reader:
            yield reader.line_num, _row_bytes(row)

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        if self._exhausted:  # at EOF, or closed
            return SourceBatch(events=[], offsets={self._key: self._consumed})
        lines = list(itertools.islice(self._lines, max(0, max_events)))
        if max_events > 0 and len(lines) < max_events:
            self.close()  # at the end: release the file right away
        events, dead = decode_records(
            [(raw, f"{self.path}:{number}") for number, raw in lines], self._format,
            self._metrics, "file", decode=_decode_csv if self._csv else None)
        self._consumed += len(lines)
        return SourceBatch(events=events, dead_letters=dead, offsets={self._key: self._consumed})

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Files are replayed from the start or a checkpoint; there is nothing to commit."""

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        target = offsets.get(self._key, 0)
        while (not self._exhausted and self._consumed < target
               and next(self._lines, None) is not None):
            self._consumed += 1

    def close(self) -> None:
        # Closing the text wrapper (CSV) closes the file beneath it too.
        (self._text or self._file).close()
        self._exhausted = True

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A CSV row travels as the JSON of its column dict, so a dead letter keeps
# exactly what was read.
def _row_bytes(row: Mapping[str | None, object]) -> bytes:
    return json.dumps({("" if k is None else k): v for k, v in row.items()}).encode()


def _decode_csv(raw: bytes) -> Event:
    data = json.loads(raw)
    if "" in data:  # csv.DictReader's key for surplus values
        data[None] = data.pop("")
    return decode_csv_row(data)

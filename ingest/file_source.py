"""Events from a JSONL or CSV file, in file order (``evaluate`` and replays)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping

from ingest.decode import decode_csv_row
from ingest.metrics import IngestMetrics
from ingest.source import DeadLetter, SourceBatch, decode_records
from streamrec.errors import DecodeError

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
        events, dead = [], []
        taken = 0
        for number, raw in self._lines:
            taken += 1
            origin = f"{self.path}:{number}"
            if self._csv:
                try:
                    events.append(decode_csv_row(_bytes_row(raw)))
                except DecodeError as e:
                    dead.append(DeadLetter(raw=raw, kind=e.kind, reason=str(e), origin=origin))
                    if self._metrics is not None:
                        self._metrics.dead_letters.labels(e.kind).inc()
            else:
                good, bad = decode_records([(raw, origin)], self._format, self._metrics, "file")
                events.extend(good)
                dead.extend(bad)
            if taken >= max_events:
                break
        else:
            self.close()  # at the end: release the file right away
        self._consumed += taken
        return SourceBatch(events=events, dead_letters=dead, offsets={self._key: self._consumed})

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Files are replayed from the start or a checkpoint; there is nothing to commit."""

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        target = offsets.get(self._key, 0)
        while self._consumed < target and next(self._lines, None) is not None:
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


def _bytes_row(raw: bytes) -> dict[str | None, str | None]:
    data = json.loads(raw)
    if "" in data:  # csv.DictReader's key for surplus values
        data[None] = data.pop("")
    return data

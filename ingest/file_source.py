"""Events from a JSONL or CSV file, in file order (``evaluate`` and replays)."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from streamrec.ingest.decode import decode_csv_row
from streamrec.ingest.event import Event
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import DeadLetter, SourceBatch, decode_records
from streamrec.errors import DecodeError, StreamrecError

log = logging.getLogger(__name__)

__all__ = ["FileSource"]

_GZIP_MAGIC = b"\x1f\x8b"
# What reading a truncated or corrupt gzip stream raises.
_UNREADABLE = (OSError, EOFError, zlib.error)

# How one line decodes: None is decode_value in the source's value format.
_Decode = Callable[[bytes], Event] | None


class FileSource:
    """Reads ``path`` (``.csv`` or JSON lines) lazily; bad lines become dead letters.

    A gzipped file (found by its magic bytes, whatever its name; ``x.csv.gz``
    is CSV) is read through gzip; one that ends early or is corrupt raises
    :class:`StreamrecError` naming the line it stopped after.

    The offset is the number of data lines consumed, under the key
    ``("file:<path>", 0)``; ``seek`` skips that many lines.

    ``decode``, where given, decodes each JSON line in place of the
    ``value_format`` decoder (it must raise only ``DecodeError``).

    CSV files are UTF-8 (a leading byte order mark is skipped) with a header
    row; columns with an empty name (the index column ``pandas.to_csv``
    writes) are ignored. A row the ``csv`` module cannot parse (a field over
    ``csv.field_size_limit()``, say) becomes a ``malformed`` dead letter that
    keeps the line's text, and reading goes on with the next line.
    """

    def __init__(self, path: str | os.PathLike[str], value_format: str = "auto",
                 metrics: IngestMetrics | None = None, decode: _Decode = None) -> None:
        self.path = os.fspath(path)
        self._raw = open(self.path, "rb")
        self._file: BinaryIO = self._raw
        head = self._raw.read(2)
        if self._raw.seekable():
            self._raw.seek(0)
        else:  # a pipe (`--events <(zcat ...)`): the two bytes are put back in front
            self._file = io.BufferedReader(_Prefixed(head, self._raw))  # type: ignore[assignment]
        if head == _GZIP_MAGIC:  # read through gzip, whatever the name
            self._file = gzip.GzipFile(fileobj=self._file, mode="rb")  # type: ignore[assignment]
        self._csv = self.path.removesuffix(".gz").endswith(".csv")
        self._format = "json" if value_format == "auto" else value_format
        self._decode = decode
        self._metrics = metrics
        # The offset key names the file, not the spelling of its path: a
        # resume from another directory, or with an absolute path, must find it.
        self._key = (f"file:{os.path.realpath(self.path)}", 0)
        self._text: io.TextIOWrapper | None = None
        self._consumed = 0
        self._exhausted = False
        self._lines = self._csv_lines() if self._csv else self._json_lines()

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def _json_lines(self) -> Iterator[tuple[int, bytes, _Decode]]:
        for number, line in enumerate(self._file, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n"), self._decode

    def _csv_lines(self) -> Iterator[tuple[int, bytes, _Decode]]:
        # utf-8-sig: Excel and PowerShell begin UTF-8 files with a byte order
        # mark, which would otherwise become part of the first column's name.
        # surrogateescape: bytes that are not UTF-8 reach the decoder as lone
        # surrogates, which it refuses (as JSON lines are refused); replacing
        # them with U+FFFD would merge distinct Latin-1 names into one id.
        self._text = io.TextIOWrapper(self._file, encoding="utf-8-sig",
                                      errors="surrogateescape", newline="")
        lines = _CountedLines(self._text)
        reader = csv.DictReader(lines)
        try:
            reader.fieldnames  # reads the header row
        except csv.Error as e:
            # No row can be read without the header: it is the one dead letter.
            yield lines.number, _raw(lines.text), _refuse(f"CSV header not readable: {e}")
            return
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                # The reader drops the rest of the line and starts afresh on the next.
                yield lines.number, _raw(lines.text), _refuse(f"CSV row not readable: {e}")
            else:
                yield lines.number, _row_bytes(row), _decode_csv

    def poll(self, max_events: int, timeout_s: float) -> SourceBatch:
        if self._exhausted:  # at EOF, or closed
            return SourceBatch(events=[], offsets={self._key: self._consumed})
        try:
            lines = list(itertools.islice(self._lines, max(0, max_events)))
        except _UNREADABLE as e:
            raise self._unreadable(e) from None
        if max_events > 0 and len(lines) < max_events:
            self.close()  # at the end: release the file right away
        events: list[Event] = []
        dead: list[DeadLetter] = []
        # Consecutive lines with the same decoder are decoded together: a whole
        # JSONL poll, or the CSV rows between two that the csv module refused.
        for decode, run in itertools.groupby(lines, key=lambda line: line[2]):
            good, bad = decode_records([(raw, f"{self.path}:{number}") for number, raw, _ in run],
                                       self._format, self._metrics, "file", decode=decode)
            events += good
            dead += bad
        self._consumed += len(lines)
        return SourceBatch(events=events, dead_letters=dead, offsets={self._key: self._consumed})

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Files are replayed from the start or a checkpoint; there is nothing to commit."""

    def seek(self, offsets: Mapping[tuple[str, int], int],
             logs: Mapping[str, str] | None = None) -> None:
        if self._key not in offsets:
            # Legitimate (a new day's file), but a moved or renamed file is
            # then learned again from its first line: say so.
            for topic, _ in offsets:
                if topic.startswith("file:"):
                    log.warning("the checkpoint's offsets are for %s, not %s: reading this "
                                "file from its first line", topic.removeprefix("file:"),
                                self._key[0].removeprefix("file:"))
                    break
        target = offsets.get(self._key, 0)
        try:
            while (not self._exhausted and self._consumed < target
                   and next(self._lines, None) is not None):
                self._consumed += 1
        except _UNREADABLE as e:
            raise self._unreadable(e) from None

    def _unreadable(self, error: Exception) -> StreamrecError:
        """A truncated or corrupt gzip stream: close, and say where reading stopped."""
        self.close()
        return StreamrecError(f"{self.path}: unreadable after line {self._consumed}: {error}")

    def close(self) -> None:
        # The text wrapper (CSV) closes the file beneath it; a GzipFile does
        # not close the file it reads from.
        (self._text or self._file).close()
        self._raw.close()
        self._exhausted = True

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Prefixed(io.RawIOBase):
    """``head``, then the rest of ``rest``: bytes already read from a pipe, put back."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read1(len(buffer))  # type: ignore[attr-defined]
        buffer[:len(data)] = data
        return len(data)


class _CountedLines:
    """A text file's lines, counting them and keeping the last one read.

    The count numbers rows for dead letters (``csv.reader.line_num`` falls
    behind on a line it fails to parse), and the last line is the text a dead
    letter keeps when its row could not be parsed at all.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.number = 0
        self.text = ""

    def __iter__(self) -> _CountedLines:
        return self

    def __next__(self) -> str:
        self.text = next(self._lines)
        self.number += 1
        return self.text


# A CSV row travels as the JSON of its column dict, so a dead letter keeps
# exactly what was read. JSON keys are strings, so csv.DictReader's key for
# surplus values (None) travels as "": columns with an empty name are dropped,
# so "" cannot also name one.
def _row_bytes(row: Mapping[str | None, object]) -> bytes:
    data = {column: value for column, value in row.items() if column}
    if None in row:
        data[""] = row[None]
    return json.dumps(data).encode()


def _raw(text: str) -> bytes:
    """A line's original bytes (undoing surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


def _decode_csv(raw: bytes) -> Event:
    data = json.loads(raw)
    if "" in data:
        data[None] = data.pop("")
    return decode_csv_row(data)


def _refuse(reason: str) -> Callable[[bytes], Event]:
    """A decoder for a line the csv module could not parse: it always fails with ``reason``."""
    def decode(raw: bytes) -> Event:
        raise DecodeError(reason, "malformed")
    return decode

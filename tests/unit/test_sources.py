"""File and memory sources, and the dead-letter file: bad records are data, not crashes."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamrec.ingest.deadletter import FileDeadLetterSink
from streamrec.ingest.decode import encode_json, encode_protobuf
from streamrec.ingest.file_source import FileSource
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.source import MemorySource
from streamrec.synthetic import SyntheticStream, default


def test_file_source_keeps_good_events_in_order_and_routes_bad_lines(tmp_path: Path) -> None:
    events = list(SyntheticStream(default()).events(25))
    lines = [encode_json(e).decode() for e in events]
    lines.insert(3, "{not json")
    lines.insert(10, json.dumps({"type": "example", "user_id": 1, "item_id": 2, "label": 1}))
    lines.insert(11, "")  # blank lines are skipped silently
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    registry = CollectorRegistry()
    source = FileSource(path, metrics=IngestMetrics(registry))
    got, dead = [], []
    while not source.exhausted:
        batch = source.poll(7, 0)
        got += batch.events
        dead += batch.dead_letters
    assert got == events
    assert [(d.kind, d.origin) for d in dead] == [("malformed", f"{path}:4"),
                                                  ("missing_field", f"{path}:11")]
    assert "timestamp_ms" in dead[1].reason
    assert registry.get_sample_value("streamrec_ingest_dead_letters_total",
                                     {"kind": "missing_field"}) == 1


def test_file_source_seeks_past_what_a_checkpoint_covered(tmp_path: Path) -> None:
    events = list(SyntheticStream(default()).events(30))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(encode_json(e).decode() + "\n" for e in events))
    with FileSource(path) as first:
        offsets = first.poll(12, 0).offsets
    assert read_on_from(path, offsets) == events[12:]


def test_csv_files_decode_like_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("type,user_id,item_id,timestamp_ms,label,f.country,f.tags\n"
                    "example,1,7,1700000000000,1,fr,a|b\n"
                    "example,2,8,not-a-time,0,de,c\n")
    registry = CollectorRegistry()
    batch = FileSource(path, metrics=IngestMetrics(registry)).poll(10, 0)
    assert [(e.user_id, e.features["tags"]) for e in batch.events] == [(1, ("a", "b"))]
    assert batch.dead_letters[0].kind == "wrong_type"
    assert batch.dead_letters[0].origin == f"{path}:3"
    get = registry.get_sample_value
    assert get("streamrec_ingest_records_total", {"source": "file"}) == 2
    assert get("streamrec_ingest_dead_letters_total", {"kind": "wrong_type"}) == 1


def test_memory_source_accepts_json_protobuf_and_events() -> None:
    e1, e2, e3 = SyntheticStream(default()).events(3)
    source = MemorySource([encode_json(e1), encode_protobuf(e2), e3, b"\x00garbage"])
    batch = source.poll(10, 0)
    assert [e.event_id for e in batch.events] == [e1.event_id, e2.event_id, e3.event_id]
    assert len(batch.dead_letters) == 1 and source.exhausted


def test_dead_letter_file_keeps_the_record_and_the_reason(tmp_path: Path) -> None:
    source = MemorySource([b'{"type": "click"}', b"\xff\xfe binary"])
    letters = source.poll(10, 0).dead_letters
    sink = FileDeadLetterSink(tmp_path / "dead" / "letters.jsonl")
    sink.put(letters)
    sink.close()
    rows = [json.loads(line) for line in (tmp_path / "dead" / "letters.jsonl").read_text()
            .splitlines()]
    assert rows[0]["raw"] == '{"type": "click"}' and rows[0]["kind"] == "missing_field"
    assert "raw_base64" in rows[1] and rows[1]["kind"] == "malformed"


def read_on_from(path: Path | str, offsets: dict) -> list:
    """The events a source over ``path`` returns after seeking to ``offsets``."""
    with FileSource(path) as resumed:
        resumed.seek(offsets)
        return resumed.poll(100, 0).events


def read_all(path: Path) -> tuple[list, list]:
    with FileSource(path) as source:
        batch = source.poll(100, 0)
    return batch.events, batch.dead_letters


def test_csv_index_columns_are_ignored_and_surplus_values_still_refused(tmp_path: Path) -> None:
    # pandas.to_csv writes its index as a first column with an empty name.
    path = tmp_path / "pandas.csv"
    path.write_text(",type,label,user_id,item_id,timestamp_ms\n"
                    "0,example,1,1,2,1000\n"
                    "1,example,0,3,4,1001,surplus\n"
                    "2,example,0,5,6,1002\n")
    events, dead = read_all(path)
    assert [e.user_id for e in events] == [1, 5]
    assert [(d.kind, d.origin) for d in dead] == [("malformed", f"{path}:3")]
    assert "more values than the header has columns" in dead[0].reason


def test_an_unreadable_csv_row_is_a_dead_letter_and_reading_goes_on(tmp_path: Path) -> None:
    big = "x" * (csv.field_size_limit() + 1)
    path = tmp_path / "big.csv"
    path.write_text("type,label,user_id,item_id,timestamp_ms,f.tag\n"
                    "example,1,1,2,1000,a\n"
                    f"example,1,3,4,1001,{big}\n"
                    "example,1,5,6,1002,b\n")
    registry = CollectorRegistry()
    with FileSource(path, metrics=IngestMetrics(registry)) as source:
        batch = source.poll(100, 0)
    assert [e.features["tag"] for e in batch.events] == [("a",), ("b",)]
    [letter] = batch.dead_letters
    assert (letter.kind, letter.origin) == ("malformed", f"{path}:3")
    assert "field larger than field limit" in letter.reason
    assert letter.raw == f"example,1,3,4,1001,{big}\n".encode()  # the line as read
    assert registry.get_sample_value("streamrec_ingest_records_total", {"source": "file"}) == 3


def test_an_unreadable_csv_header_is_the_one_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "bad_header.csv"
    path.write_text("type," + "x" * (csv.field_size_limit() + 1) + "\nexample\n")
    events, dead = read_all(path)
    assert events == [] and [(d.kind, d.origin) for d in dead] == [("malformed", f"{path}:1")]
    assert "header" in dead[0].reason


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" and PowerShell start the file with U+FEFF.
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftype,label,user_id,item_id,timestamp_ms\n"
                     "example,1,1,2,1000\n".encode())
    events, dead = read_all(path)
    assert [(e.type, e.user_id) for e in events] == [("example", 1)] and dead == []


def test_a_resume_finds_the_offset_however_the_path_is_spelled(tmp_path: Path,
                                                               monkeypatch) -> None:
    events = list(SyntheticStream(default()).events(30))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(encode_json(e).decode() + "\n" for e in events))
    with FileSource(path) as first:
        offsets = first.poll(12, 0).offsets
    monkeypatch.chdir(tmp_path)
    assert read_on_from("events.jsonl", offsets) == events[12:]  # relative, another directory


def test_offsets_of_another_file_read_from_the_start_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A new day's file after yesterday's checkpoint is normal; a moved or
    # renamed one is then learned twice: the log says which happened.
    events = list(SyntheticStream(default()).events(10))
    path = tmp_path / "moved.jsonl"
    path.write_text("".join(encode_json(e).decode() + "\n" for e in events))
    with caplog.at_level(logging.WARNING, logger="streamrec.ingest.file_source"):
        assert read_on_from(path, {(f"file:{tmp_path}/events.jsonl", 0): 4}) == events
    assert f"offsets are for {tmp_path}/events.jsonl, not {path}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamrec.ingest.file_source"):
        assert read_on_from(path, {(f"file:{path}", 0): 4}) == events[4:]
    assert caplog.text == ""


def test_csv_text_that_float_reads_as_nan_or_infinity_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_text("type,label,user_id,item_id,timestamp_ms,f.first_name,f.tags\n"
                    "example,1,1,2,1000,Nan,inf|Infinity\n"
                    "example,0,3,4,1001,Ann,1e999\n")
    events, dead = read_all(path)
    assert dead == []
    assert [e.features["first_name"] for e in events] == [("Nan",), ("Ann",)]
    assert [e.features["tags"] for e in events] == [("inf", "Infinity"), ("1e999",)]


def test_csv_bytes_that_are_not_utf8_are_refused_not_replaced(tmp_path: Path) -> None:
    # "Müller" and "Möller" in Latin-1 would both read as "M\ufffdller" under
    # replacement, and hash to one id.
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"type,label,user_id,item_id,timestamp_ms,f.city\n"
                     b"example,1,1,2,1000,M\xfcller\n"
                     b"example,1,3,4,1001,Paris\n"
                     b"example,1,5,6,1002,M\xf6ller\n")
    events, dead = read_all(path)
    assert [e.features["city"] for e in events] == [("Paris",)]
    assert [(d.kind, d.origin) for d in dead] == [("malformed", f"{path}:2"),
                                                  ("malformed", f"{path}:4")]
    assert "not UTF-8" in dead[0].reason


def test_gzipped_files_read_like_plain_ones_and_a_truncated_one_is_a_clear_error(
        tmp_path: Path) -> None:
    import gzip

    from streamrec.errors import StreamrecError

    events = list(SyntheticStream(default()).events(300))
    text = "".join(encode_json(e).decode() + "\n" for e in events)
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(text.encode()))
    assert read_all(path) == (events[:100], [])
    assert read_on_from(path, {(f"file:{path}", 0): 250}) == events[250:]
    csv_path = tmp_path / "events.csv.gz"
    csv_path.write_bytes(gzip.compress(b"type,label,user_id,item_id,timestamp_ms\n"
                                       b"example,1,1,2,1000\n"))
    assert [e.user_id for e in read_all(csv_path)[0]] == [1]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(path.read_bytes()[:-40])  # a file still being written
    with FileSource(cut) as source, pytest.raises(StreamrecError, match="unreadable after"):
        while not source.exhausted:
            source.poll(100, 0)


def test_a_pipe_reads_like_a_file_gzipped_or_not(tmp_path: Path) -> None:
    # `streamrec evaluate --events <(zcat log.gz)`: the source cannot seek.
    import gzip
    import os
    import threading
    import time

    events = list(SyntheticStream(default()).events(50))
    text = "".join(encode_json(e).decode() + "\n" for e in events).encode()
    def write_slowly(path: Path, payload: bytes) -> None:
        with path.open("wb", buffering=0) as f:
            f.write(payload[:1])  # a writer whose first write is one byte
            time.sleep(0.05)
            f.write(payload[1:])

    for name, payload in (("plain", text), ("gzipped", gzip.compress(text))):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        writer = threading.Thread(target=write_slowly, args=(fifo, payload))
        writer.start()
        assert read_all(fifo) == (events, []), name
        writer.join()


def test_a_corrupt_gzip_is_a_clear_error_when_read_and_when_resumed(tmp_path: Path) -> None:
    import gzip

    import pytest

    from streamrec.errors import StreamrecError

    text = "".join(encode_json(e).decode() + "\n"
                   for e in SyntheticStream(default()).events(2000)).encode()
    data = bytearray(gzip.compress(text))
    data[len(data) // 2] ^= 0xFF  # a flipped byte mid-stream: zlib's own error
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(bytes(data))
    with FileSource(corrupt) as source, pytest.raises(StreamrecError, match="unreadable after"):
        while not source.exhausted:
            source.poll(100, 0)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(text)[:-40])
    with FileSource(cut) as source, pytest.raises(StreamrecError, match="unreadable after"):
        source.seek({(f"file:{cut}", 0): 10_000})  # a resume reads past the cut


def test_decoded_values_name_only_the_refused_records_origin() -> None:
    """A batch's dead letters say where each came from; good records cost no origin string."""
    from streamrec.ingest.source import decode_values

    registry = CollectorRegistry()
    metrics = IngestMetrics(registry=registry)
    asked: list[int] = []

    def origin(i: int) -> str:
        asked.append(i)
        return f"events/0@{100 + i}"

    good = encode_json(next(SyntheticStream(default()).events(1)))
    events, dead = decode_values([good, b"{not json", good, b'{"type": "click"}'], origin,
                                 "auto", metrics, "kafka")
    assert len(events) == 2 and asked == [1, 3]
    assert [(d.origin, d.kind) for d in dead] == [("events/0@101", "malformed"),
                                                   ("events/0@103", "missing_field")]
    assert registry.get_sample_value("streamrec_ingest_records_total", {"source": "kafka"}) == 4
    with pytest.raises(ValueError, match="value_format='xml'"):
        decode_values([good], origin, "xml")

"""The learned-offsets ledger: which records of which log each checkpoint learned.

``learned.jsonl`` beside the checkpoints, one line per checkpoint;
``python -m streamrec.trainer.ledger CHECKPOINT_DIR`` prints every offset learned
twice or skipped. Format and lineage rules: docs/design.md, "The learned-offsets ledger".
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Ledger", "read_ledger", "coverage", "LEDGER_NAME"]

LEDGER_NAME = "learned.jsonl"


class Ledger:
    """Appends the checkpoints' lines to ``directory/learned.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LEDGER_NAME

    def append(self, line: dict[str, Any]) -> None:
        """Append one checkpoint's line (fsynced: it claims a checkpoint exists)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def repair(self, line: dict[str, Any] | None) -> None:
        """On resume: drop a torn last line, and append ``line`` (the resumed
        checkpoint's) if the process that wrote the checkpoint died before it did."""
        if not self.path.exists():
            if line is not None:
                self.append(line)
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            keep = raw[:raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
                os.fsync(f.fileno())
        if line is None:
            return
        lines = _parse(self.path.read_text(encoding="utf-8").splitlines())
        if not lines or lines[-1].get("seq") != line["seq"]:
            self.append(line)


def _parse(texts: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for text in texts:
        try:
            out.append(json.loads(text))
        except ValueError:
            continue  # a torn line (the writer was killed mid-line)
    return out


def read_ledger(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of the newest lineage, oldest first (see the module docstring)."""
    path = Path(directory) / LEDGER_NAME
    if not path.exists():
        return []
    lines = _parse(path.read_text(encoding="utf-8").splitlines())
    chain: list[dict[str, Any]] = []
    want = lines[-1]["seq"] if lines else 0
    for line in reversed(lines):
        # (A line above ``want`` belongs to an abandoned lineage; one below it
        # follows a line that could not be written, which its checkpoint holds.)
        if line["seq"] <= want:
            chain.append(line)
            want = line["seq"] - 1
    return chain[::-1]


def coverage(lines: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Per ``(topic, partition, log)``: records and examples learned, the offsets
    learned twice (``twice``) and those skipped (``gaps``) between the first and
    the last offset learned, as ``[first, next)`` ranges."""
    spans: dict[tuple[str, int, str], list[tuple[int, int, int, int]]] = {}
    for line in lines:
        for s in line["spans"]:
            spans.setdefault((s["topic"], s["partition"], s["log"]), []).append(
                (s["first"], s["next"], s["records"], s["examples"]))
    out = {}
    for key, runs in spans.items():
        runs.sort()
        twice, gaps = [], []
        end = runs[0][0]
        for first, nxt, _, _ in runs:
            if first < end:
                twice.append([first, min(end, nxt)])
            elif first > end:
                gaps.append([end, first])
            end = max(end, nxt)
        out[key] = {"first": runs[0][0], "next": end,
                    "records": sum(r[2] for r in runs), "examples": sum(r[3] for r in runs),
                    "twice": twice, "gaps": gaps}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m streamrec.trainer.ledger CHECKPOINT_DIR", file=sys.stderr)
        return 2
    lines = read_ledger(argv[0])
    for (topic, partition, log_id), c in sorted(coverage(lines).items()):
        print(json.dumps({"topic": topic, "partition": partition, "log": log_id, **c}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Checkpointer: a failed write leaves no temporary file and raises CheckpointError;
temporary files of killed processes are cleaned up when the next trainer starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from streamrec.errors import CheckpointError
from trainer.checkpoint import Checkpointer


def test_a_write_that_fails_inside_torch_save_leaves_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpointer = Checkpointer(tmp_path)
    first = checkpointer.save(1, {"w": torch.ones(4)}, {("events", 0): 10}, version=1)

    def disk_full(obj: Any, f: Any) -> None:
        f.write(b"partial checkpoint")
        # What torch.save raises when the file cannot be written (ENOSPC, EFBIG).
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="ckpt-000000000002.pt") as info:
        checkpointer.save(2, {"w": torch.zeros(4)}, {("events", 0): 20}, version=2)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    monkeypatch.undo()
    latest = checkpointer.latest()
    assert latest is not None and latest.step == 1 and latest.offsets == {("events", 0): 10}


def test_temporary_files_of_a_killed_process_are_removed_at_start(tmp_path: Path) -> None:
    Checkpointer(tmp_path).save(7, {"w": torch.ones(2)}, {("events", 0): 3}, version=0)
    stale = [tmp_path / "ckpt-000000000008.pt.tmp4242", tmp_path / "ckpt-000000000009.pt.tmp1"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    others = ["notes.txt", "ckpt-000000000008.pt.tmpfile", "my-ckpt-000000000008.pt.tmp12"]
    for name in others:
        (tmp_path / name).write_text("not ours")
    checkpointer = Checkpointer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt-000000000007.pt", *others])
    latest = checkpointer.latest()
    assert latest is not None and latest.step == 7

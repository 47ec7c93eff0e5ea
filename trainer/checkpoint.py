"""Atomic checkpoints of the trainer's whole state plus the input offsets it covers.

A checkpoint is one file written to a temporary name, fsynced, then renamed
into place (rename is atomic on POSIX), so a crash mid-write leaves the
previous checkpoint intact. Kafka offsets are stored inside the same file and
committed to the broker only after the file is in place: on restart the
trainer resumes from exactly the events its state has learned from, and
anything after them is delivered again, so each event is learned once. The
file also carries the learned-offsets ledger's view (trainer.ledger): the log
each topic's offsets belong to, and the records taken in since the previous
checkpoint.

Files hold tensors and plain containers only and are read back with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamrec.errors import CheckpointError

__all__ = ["Checkpointer", "Checkpoint", "checkpoint_name", "describe"]

_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
# What :meth:`Checkpointer.save` writes before the rename: ``ckpt-<step>.pt.tmp<pid>``.
_TEMP = re.compile(r"^ckpt-\d{12}\.pt\.tmp\d+$")
_OLDER = " (move it away to resume from the next older checkpoint, if there is one)"


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint written at ``step``."""
    return f"ckpt-{step:012d}.pt"


def describe(error: BaseException) -> str:
    """Why reading or loading a checkpoint failed, in words (some errors carry none).

    ``KeyError('x')`` -> "no state for 'x'"; an ``EOFError()`` -> "EOFError".
    """
    if isinstance(error, KeyError) and error.args:
        return f"no state for {error.args[0]!r}"
    return str(error) or type(error).__name__


@dataclass
class Checkpoint:
    step: int
    state: dict[str, Any]
    offsets: dict[tuple[str, int], int]
    version: int  # last parameter version published before the checkpoint
    path: Path
    # The learned-offsets ledger's view (trainer.ledger): ``logs`` (topic -> the
    # id of the log the offsets belong to), ``seq``, and this checkpoint's ledger
    # ``line`` (None when it took in no new records). Empty in older checkpoints.
    ledger: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Writes ``ckpt-<step>.pt`` files into ``directory``, keeping the newest ``keep``.

    The directory belongs to one trainer at a time: on construction the
    temporary files a killed earlier process left behind (``ckpt-*.pt.tmp<pid>``,
    possibly as large as a checkpoint) are deleted. ``exclusive`` enforces it
    (``streamrec train`` does): the directory's ``.lock`` file is locked
    (``flock``) for the life of the process, first, and a second trainer gets a
    :class:`CheckpointError` instead of resuming from the first one's state and
    overwriting its checkpoints.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3,
                 exclusive: bool = False) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self._lock: int | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._lock = self._take_lock()
            for stale in self.directory.iterdir():
                if _TEMP.match(stale.name):
                    stale.unlink(missing_ok=True)
        except OSError as e:
            self.close()
            raise CheckpointError(f"checkpoint directory {str(directory)!r}: "
                                  f"{e.strerror or e}") from None

    def _take_lock(self) -> int:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"checkpoint directory {str(self.directory)!r} is in use by another trainer "
                f"(pid {holder}); give each trainer its own trainer.checkpoint_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def close(self) -> None:
        """Release the directory (``exclusive``); the process's exit does it too."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _paths(self) -> list[Path]:
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found)

    def save(self, step: int, state: Mapping[str, Any],
             offsets: Mapping[tuple[str, int], int], version: int,
             ledger: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically; returns its path.

        ``ledger`` holds plain containers only (see :attr:`Checkpoint.ledger`).
        """
        path = self.directory / checkpoint_name(step)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        payload = {
            "state": dict(state),
            "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
            "version": version,
            "step": step,
            "ledger": dict(ledger or {}),
            "written_at": time.time(),
        }
        try:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except Exception as e:  # torch.save reports a full disk as RuntimeError, not OSError
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
        for old in self._paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Checkpoint | None:
        """The newest readable checkpoint, or None when there is none.

        A corrupt newest file (which atomic writes make unlikely) raises
        :class:`CheckpointError` rather than silently falling back and
        re-reading offsets the broker may already consider committed.
        """
        paths = self._paths()
        if not paths:
            return None
        path = paths[-1]
        try:
            payload = torch.load(path, weights_only=True)
        except Exception as e:  # torch raises several types for bad files
            raise CheckpointError(f"cannot read checkpoint {path}: {describe(e)}{_OLDER}") from e
        try:
            offsets = {(str(t), int(p)): int(o) for t, p, o in payload["offsets"]}
            return Checkpoint(step=int(payload["step"]), state=dict(payload["state"]),
                              offsets=offsets, version=int(payload["version"]), path=path,
                              ledger=dict(payload.get("ledger", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is not a streamrec checkpoint "
                                  f"({type(e).__name__}: {e}){_OLDER}") from e

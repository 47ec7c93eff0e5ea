"""Small C kernels for the hot loops of training, built on first use.

Three libraries: ``kernels.c`` (plain C, on tensors' data pointers: the FM head,
the id dedup, the id index's probes, row initialisation, the gather of rows,
the history counts), ``batch.c`` (against the CPython headers: the
batcher's one-pass build) and ``records.c`` (the same: Kafka record batches
read into records). Each is compiled with the system C compiler
(``$CC``, else ``cc``) into a cache directory the first time a process needs
it, keyed by a hash of its source, flags and platform, with a sidecar hash
checked before loading, and called through ctypes. Building takes about a
second; a machine without a compiler, or ``STREAMREC_NATIVE=0``, runs the
torch and Python versions of the same functions (the reference the tests
compare against), slower; so does code inside :func:`disabled`.

The kernels trust their inputs (indices in range, an id index under its load
factor): callers pass tensors the trainer built itself.

``STREAMREC_NATIVE_DIR`` sets the cache directory (default
``$XDG_CACHE_HOME/streamrec`` or ``~/.cache/streamrec``); a container image
builds the libraries at image build time (``python -m streamrec.native``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = ["available", "batch_columns", "build", "disabled", "fm_head_backward",
           "fm_head_forward", "gather_rows", "history_prefix", "id_normal", "index_find",
           "index_hash", "index_place", "kafka_records", "unique_pairs"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]
_loaded: dict[str, ctypes.CDLL | None] = {}  # by name, once tried
_disabled = 0  # depth of disabled() blocks


def _cache_dir() -> Path:
    configured = os.environ.get("STREAMREC_NATIVE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "streamrec"


def _compile(name: str, source: str, extra: list[str]) -> Path:
    """The library built from ``source`` (under this package), compiling it if the
    cache lacks it or holds a damaged copy. Raises ``RuntimeError`` (with the
    compiler's message) or ``OSError`` when it cannot be built."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    flags = [*_FLAGS, *extra]
    digest = hashlib.sha256((_HERE / source).read_bytes())
    digest.update(" ".join([*compiler, *flags, sys.platform, platform.machine()]).encode())
    target = _cache_dir() / f"streamrec-{name}-{digest.hexdigest()[:16]}.so"
    # Each library has a sidecar with its own hash, checked before loading: a
    # truncated or overwritten file would crash the process inside dlopen (SIGBUS).
    check = target.with_suffix(".sha256")
    if target.exists():
        if check.exists() and check.read_text().strip() == _file_hash(target):
            return target
        log.warning("native library %s is damaged; building it again", target)
    if not compiler or shutil.which(compiler[0]) is None:
        raise RuntimeError(f"no C compiler ({' '.join(compiler)!r} not found; set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target.parent)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        command = [*compiler, *_FLAGS, "-o", partial, str(_HERE / source), *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(compiler)} failed: {done.stderr.strip()[-2000:]}")
        with open(partial, "rb") as f:
            head = f.read(4)
        if sys.platform.startswith("linux") and head != b"\x7fELF":
            raise RuntimeError(f"{' '.join(compiler)} wrote no shared library ({partial})")
        # mkstemp makes the file 0600 and the linker keeps that: the runtime user of
        # an image built as root could not load it.
        os.chmod(partial, 0o755)
        _replace_text(check, _file_hash(Path(partial)))
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace_text(path: Path, text: str) -> None:
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def _remove_stale_partials(directory: Path) -> None:
    """Temporary files of builds killed midway (over an hour old)."""
    for leftover in directory.glob("*.partial"):
        try:
            if time.time() - leftover.stat().st_mtime > 3600:
                leftover.unlink()
        except OSError:
            pass  # another process's, just finished or removed


def _batch_flags() -> list[str]:
    # Symbols of the C API resolve against the running interpreter, as an
    # extension module's do (macOS's linker must be told so).
    flags = ["-I" + sysconfig.get_paths()["include"]]
    return flags + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])


def build() -> list[Path]:
    """The libraries' paths, compiling what the cache lacks and loading each (so that
    a library that would not load fails here): ``python -m streamrec.native``.

    Raises ``RuntimeError``, ``OSError`` or ``AttributeError`` when one cannot be built.
    """
    return [Path(lib._name) for lib in (_kernels(), _batcher(), _records())]


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.fm_head_forward.argtypes = [p, i, i, i, i, i, i, p, p, p, p]
    lib.fm_head_forward.restype = None
    lib.fm_head_backward.argtypes = [p, i, i, i, i, i, i, p, p, p, p, p, p, p]
    lib.fm_head_backward.restype = None
    lib.history_prefix.argtypes = [p, p, p, i, i, p, p]
    lib.history_prefix.restype = None
    lib.unique_pairs.argtypes = [p, p, i, p, i, p, p, p, p]
    lib.unique_pairs.restype = i
    lib.index_hash.argtypes = [p, p, i, p]
    lib.index_hash.restype = None
    lib.index_find.argtypes = [p, p, p, p, i, i, p, p, p, p, i, p]
    lib.index_find.restype = None
    lib.index_place.argtypes = [p, p, p, p, i, i, p, p, p, i]
    lib.index_place.restype = None
    lib.id_normal.argtypes = [p, i, i, i, p]
    lib.id_normal.restype = None
    lib.gather_rows.argtypes = [p, p, i, i, p]
    lib.gather_rows.restype = None
    lib.scatter_add_rows.argtypes = [p, p, i, i, i, p]
    lib.scatter_add_rows.restype = None


def _open(build: Callable[[], ctypes.CDLL], what: str) -> ctypes.CDLL | None:
    """``build()``'s library, or None when switched off or failing (``what`` is logged)."""
    if os.environ.get("STREAMREC_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("native %s switched off by STREAMREC_NATIVE", what)
        return None
    try:
        return build()
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        log.warning("native %s unavailable: %s", what, e)
        return None


def _kernels() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_compile("native", "kernels.c", ["-lm"])))
    _declare(lib)
    return lib


def _batcher() -> ctypes.CDLL:
    lib = ctypes.PyDLL(str(_compile("batch", "batch.c", [*_batch_flags(), "-lm"])))
    p, i, o = ctypes.c_void_p, ctypes.c_int64, ctypes.py_object
    lib.batch_columns.argtypes = [o, o, o, o, i, i, i, i, i, i, p, p, p, p, p]
    lib.batch_columns.restype = ctypes.c_int
    return lib


def _records() -> ctypes.CDLL:
    lib = ctypes.PyDLL(str(_compile("records", "records.c", _batch_flags())))
    i, o = ctypes.c_int64, ctypes.py_object
    lib.kafka_records.argtypes = [o, i, i, i, i, i, i, o, o, o, o]
    lib.kafka_records.restype = o
    return lib


_BUILDERS = {"kernels": (_kernels, "kernels (the slower torch versions run)"),
             "batch": (_batcher, "batch builder (the slower Python batcher runs)"),
             "records": (_records, "Kafka record reader (the slower Python reader runs)")}


def _get(name: str) -> ctypes.CDLL | None:
    """Library ``name`` of _BUILDERS, loaded (or found missing, logged) once per process."""
    if name not in _loaded:
        _loaded[name] = _open(*_BUILDERS[name])
    return _loaded[name]


def _load() -> ctypes.CDLL | None:
    return _get("kernels")


Columns = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def batch_columns(events: list[object], sparse: tuple[int | str, ...], dense: tuple[str, ...],
                  memo: dict[object, int], fields: tuple[int, int, int, int, int, int]
                  ) -> Columns | None:
    """ingest.batch.Batcher's common case in one pass (batch.c): ``(values, dense,
    labels, sample_rates, timestamps_ms)``, or None where the batch needs the
    general path (or the builder is not available). ``sparse`` holds 0 for the
    user id, 1 for the item id, or a feature name; ``fields`` the Event's indexes
    of user_id, item_id, features, label, sample_rate and timestamp_ms."""
    if _disabled:
        return None
    lib = _get("batch")
    if lib is None:
        return None
    n = len(events)
    values = torch.empty(len(sparse) * n, dtype=torch.int64)
    dense_out = torch.empty((n, len(dense)), dtype=torch.float32)
    labels, rates = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
    stamps = torch.empty(n, dtype=torch.int64)
    done = lib.batch_columns(events, sparse, dense, memo, *fields, values.data_ptr(),
                             dense_out.data_ptr(), labels.data_ptr(), rates.data_ptr(),
                             stamps.data_ptr())
    return (values, dense_out, labels, rates, stamps) if done else None


def kafka_records(data: bytes, start: int, count: int, base_offset: int, first_timestamp: int,
                  log_append_time: int, timestamp_type: int, record_type: type,
                  topic: str, partition: int, leader_epoch: int
                  ) -> tuple[list[tuple], int] | None:
    """``count`` records of a v2 batch from ``data[start:]`` as ``record_type`` tuples, and
    their bytes (records.c); None where the Python reader must read them (headers,
    anything malformed) or the reader is not available. ``log_append_time`` stamps
    every record of a ``timestamp_type`` 1 batch."""
    if _disabled:
        return None
    lib = _get("records")
    if lib is None:
        return None
    return lib.kafka_records(data, start, count, base_offset, first_timestamp, log_append_time,
                             timestamp_type, record_type, topic, partition, leader_epoch)


def available(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels are loaded and take these tensors (float32 on the CPU)."""
    return not _disabled and all(
        t is None or (t.dtype == torch.float32 and t.device.type == "cpu")
        for t in tensors) and _load() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, callers run the torch versions (to compare the two)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return tensor.data_ptr() if tensor is not None else None


def _lib() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("native kernels are not available (see available())")
    return lib


def fm_head_forward(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B], sums [B, d])`` of the FM head (kernels.c) for ``rows`` ``[F, B, d+1]``
    (unit column stride), ``extra`` ``[B, d]`` or None and ``weight`` ``[F (+1), d]``."""
    assert (rows.numel() == 0 or rows.stride(2) == 1) and weight.is_contiguous()
    assert rows.dtype == weight.dtype == torch.float32
    assert extra is None or extra.is_contiguous()
    n_fields, batch, width = rows.shape
    out = torch.empty(batch, dtype=torch.float32)
    sums = torch.empty((batch, width - 1), dtype=torch.float32)
    _lib().fm_head_forward(rows.data_ptr(), n_fields, batch, width - 1, rows.stride(0),
                           rows.stride(1), extra is not None, _ptr(extra), weight.data_ptr(),
                           out.data_ptr(), sums.data_ptr())
    return out, sums


def fm_head_backward(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                     sums: torch.Tensor, grad: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients ``(rows [F, B, d+1] contiguous, extra, weight)`` for the output's ``grad``."""
    grad = grad.contiguous()
    grad_rows = torch.empty(rows.shape, dtype=torch.float32)
    grad_extra = torch.empty_like(extra) if extra is not None else None
    grad_weight = torch.empty_like(weight)
    _lib().fm_head_backward(rows.data_ptr(), rows.shape[0], rows.shape[1], rows.shape[2] - 1,
                            rows.stride(0), rows.stride(1), extra is not None, _ptr(extra),
                            weight.data_ptr(),
                            sums.data_ptr(), grad.data_ptr(), grad_rows.data_ptr(),
                            _ptr(grad_extra), grad_weight.data_ptr())
    return grad_rows, grad_extra, grad_weight


def history_prefix(stored: torch.Tensor, inverse: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(before [N, 2], totals [U, 2])``: per element (in order), its key's stored
    (n, c) plus the count and label sum of the earlier elements with the same key
    (``inverse`` [N] indexes ``stored`` [U, 2]); and per key, the batch's (count, sum)."""
    stored, inverse, y = stored.contiguous(), inverse.contiguous(), y.contiguous()
    assert inverse.dtype == torch.int64 and stored.shape[1] == 2
    before = torch.empty((inverse.numel(), 2), dtype=torch.float32)
    totals = torch.empty((stored.shape[0], 2), dtype=torch.float32)
    _lib().history_prefix(stored.data_ptr(), inverse.data_ptr(), y.data_ptr(), inverse.numel(),
                          stored.shape[0], before.data_ptr(), totals.data_ptr())
    return before, totals


def unique_pairs(ids: torch.Tensor, tags: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dedup of the int64 pairs ``(ids[i], tags[i])`` by hashing:
    ``(ids, tags, inverse, counts)`` of the unique pairs, in order of first occurrence."""
    ids, tags = ids.contiguous(), tags.contiguous()
    assert ids.dtype == tags.dtype == torch.int64
    n = ids.numel()
    capacity = 1 << max(4, (2 * n).bit_length())  # under half full
    slots = torch.empty(capacity, dtype=torch.int64)
    uniq_ids, uniq_tags, counts = (torch.empty(n, dtype=torch.int64) for _ in range(3))
    inverse = torch.empty(n, dtype=torch.int64)
    found = _lib().unique_pairs(ids.data_ptr(), tags.data_ptr(), n, slots.data_ptr(), capacity,
                                uniq_ids.data_ptr(), uniq_tags.data_ptr(), counts.data_ptr(),
                                inverse.data_ptr())
    return uniq_ids[:found], uniq_tags[:found], inverse, counts[:found]


def index_hash(ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
    """streamrec.model.tables.index.key_hash: the slot hash of each id (of each ``(tag, id)``)."""
    assert ids.dtype == torch.int64 and (tags is None or tags.dtype == torch.int64)
    ids = ids.contiguous()
    tags = tags.contiguous() if tags is not None else None
    out = torch.empty(ids.numel(), dtype=torch.int64)
    _lib().index_hash(ids.data_ptr(), _ptr(tags), ids.numel(), out.data_ptr())
    return out


def index_find(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
               cap_bits: torch.Tensor, global_bits: int, stride: int, row_ids: torch.Tensor,
               row_tags: torch.Tensor | None, ids: torch.Tensor, tags: torch.Tensor | None
               ) -> torch.Tensor:
    """streamrec.model.tables.index.IdIndex._find over its arrays (``row_tags`` None: untagged)."""
    assert ids.dtype == torch.int64 and (tags is None or tags.dtype == torch.int64)
    assert row_tags is None or row_tags.dtype == torch.int16
    ids = ids.contiguous()
    tags = tags.contiguous() if tags is not None else None
    out = torch.empty(ids.numel(), dtype=torch.int64)
    _lib().index_find(slots.data_ptr(), directory.data_ptr(), depth.data_ptr(),
                      cap_bits.data_ptr(), global_bits, stride, row_ids.data_ptr(),
                      _ptr(row_tags), ids.data_ptr(), _ptr(tags), ids.numel(), out.data_ptr())
    return out


def index_place(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
                cap_bits: torch.Tensor, global_bits: int, stride: int, used: torch.Tensor,
                live: torch.Tensor, values: torch.Tensor) -> None:
    """streamrec.model.tables.index.IdIndex._place, in place (``used``, ``live``: per-segment counts)."""
    assert values.dtype == used.dtype == live.dtype == torch.int64
    assert used.is_contiguous() and live.is_contiguous()
    values = values.contiguous()
    _lib().index_place(slots.data_ptr(), directory.data_ptr(), depth.data_ptr(),
                       cap_bits.data_ptr(), global_bits, stride, used.data_ptr(),
                       live.data_ptr(), values.data_ptr(), values.numel())


def id_normal(ids: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """streamrec.model.tables.rows.id_normal's ``[len(ids), dim]`` (``offset``: its seed offset)."""
    ids = ids.contiguous()
    assert ids.dtype == torch.int64
    out = torch.empty((ids.numel(), dim), dtype=torch.float32)
    _lib().id_normal(ids.data_ptr(), ids.numel(), dim, offset, out.data_ptr())
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, table: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        table, index = table.contiguous(), index.contiguous()
        assert index.dtype == torch.int64 and table.dtype == torch.float32
        out = torch.empty((index.numel(), table.shape[1]), dtype=torch.float32)
        _lib().gather_rows(table.data_ptr(), index.data_ptr(), index.numel(), table.shape[1],
                           out.data_ptr())
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad.contiguous()
        rows = ctx.rows  # type: ignore[attr-defined]
        out = torch.empty((rows, grad.shape[1]), dtype=torch.float32)
        _lib().scatter_add_rows(grad.data_ptr(), index.data_ptr(), index.numel(), grad.shape[1],
                                out.shape[0], out.data_ptr())
        return out, None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.index_select(0, index)`` for a 2-D float32 ``table`` and int64 ``index``
    (in range), differentiable in ``table``: torch's copies rows of a few floats one
    generic loop iteration at a time, and its backward is a scatter_add as slow."""
    return _GatherRows.apply(table, index)


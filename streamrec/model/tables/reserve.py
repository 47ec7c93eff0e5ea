"""Row-aligned arrays that grow without copying: address space reserved up front.

A dynamic table's row tensors must grow while training, and growing a torch
tensor means allocating a larger one and copying every row: a step that pays
for the whole table (0.3 s at 1.7M rows, seconds at tens of millions). A
:class:`ReservedArray` instead reserves address space for ``limit`` rows once
(an anonymous ``MAP_NORESERVE`` mapping: no memory is committed and none is
accounted against overcommit) and hands out views of its first ``capacity``
rows; growing moves the view's end, and the kernel commits zeroed pages as
rows are first written. Existing rows never move.

Where the reservation is refused (strict overcommit, a small ``RLIMIT_AS``, a
platform without the flag), or rows outgrow ``limit``, the array falls back to
an ordinary tensor that doubles by copying, with a warning (once per process
for a refusal, once per array for outgrowing).
"""

from __future__ import annotations

import logging
import mmap
import sys

import torch

__all__ = ["ReservedArray"]

log = logging.getLogger(__name__)

# Linux's MAP_NORESERVE (Python's mmap module names it from 3.12 on).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
_PAGE = mmap.PAGESIZE
_refused: list[int] = []  # sizes refused (the first one is logged, once per process)


def _reserve(nbytes: int) -> torch.Tensor | None:
    """``nbytes`` of zeroed, uncommitted memory as a uint8 tensor, or None if refused."""
    if not _MAP_NORESERVE or nbytes <= 0:
        return None
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, OverflowError, ValueError):
        return None
    # The tensor holds the mapping (through the buffer protocol) until its storage dies.
    return torch.frombuffer(region, dtype=torch.uint8)


class ReservedArray:
    """A ``[capacity, *shape]`` tensor of ``dtype`` whose capacity grows in place.

    ``data`` is the current view: read it again after :meth:`ensure` (a
    fallback copy gives it new storage; rows below the old capacity keep their
    values either way). New rows read as zeros.
    """

    def __init__(self, dtype: torch.dtype, limit: int, shape: tuple[int, ...] = (),
                 capacity: int = 0) -> None:
        self.dtype, self.shape, self.limit = dtype, shape, max(1, limit)
        self._row_bytes = torch.empty((), dtype=dtype).element_size()
        for s in shape:
            self._row_bytes *= s
        raw = _reserve(self.limit * self._row_bytes)
        self._whole = raw.view(dtype).view(self.limit, *shape) if raw is not None else None
        if self._whole is None and not _refused:
            _refused.append(self.limit * self._row_bytes)
            log.warning("address space for %d rows of %s refused (strict overcommit or a "
                        "ulimit -v?): tables grow by copying, a stall at each doubling",
                        self.limit, dtype)
        self.data = self._whole[:0] if self._whole is not None else \
            torch.zeros((0, *shape), dtype=dtype)
        self.ensure(capacity)

    @property
    def reserved(self) -> bool:
        """Whether growth is still in reserved address space (no copies)."""
        return self._whole is not None

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    def ensure(self, n: int) -> torch.Tensor:
        """Make rows ``0..n-1`` addressable (never shrinks); returns :attr:`data`."""
        have = self.capacity
        if n <= have:
            return self.data
        if self._whole is not None:
            if n <= self.limit:
                # Whole pages: the memory that memory_bytes() reports is what gets committed.
                per_page = max(1, _PAGE // self._row_bytes)
                self.data = self._whole[: min(self.limit, -(-n // per_page) * per_page)]
                return self.data
            log.warning("reserved address space for %d rows of %s exhausted: growing by copying",
                        self.limit, self.dtype)
            self._whole = None
        grown = torch.zeros((max(n, 2 * have), *self.shape), dtype=self.dtype)
        grown[:have] = self.data
        self.data = grown
        return self.data

    def nbytes(self) -> int:
        """Bytes of the rows handed out so far (committed once written)."""
        return self.capacity * self._row_bytes

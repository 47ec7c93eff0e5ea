"""A collisionless, vectorized id → row index for raw int64 ids that grows in small steps.

Keys are the raw ids themselves (no sentinel value is stolen from the id
space), so any two distinct ids, including negative and extreme ones, always
get distinct rows: the property Monolith's Cuckoo hash table gives and
modulo-hashed static tables lack (Monolith §3.1).

Rows are dense integers ``0 .. row_capacity-1`` handed out from a free list, so
the caller keeps row-aligned tensors (weights, optimizer state, times). The
index owns the one copy of each key: ``row_ids[row]`` (and ``row_tags[row]``
in a tagged index), in address space reserved up front
(:class:`~trainer.tables.reserve.ReservedArray`), so rows never move.

Slots are extendible hashing (Fagin et al. 1979) over open-addressing
segments: the top bits of a 64-bit mix of the key pick a segment through a
directory, the next bits a slot, and probing is linear within the segment.
A slot is one int64: the mix's top 32 bits over ``row + 1`` (0: empty;
row part 0 otherwise: deleted), so probes compare the key itself only on a
32-bit match, and segments are rebuilt from their slots alone. A segment
grows by doubling up to ``2^15`` slots and then splits in two, so one growth
moves at most 2^15 entries whatever the table's size; after each insert the
fullest segments are grown ahead of need, up to 3 entries moved per entry
inserted and 4 segments' worth per call, which spreads growth evenly over
steps instead of letting every segment fill up at once (a full rehash in
disguise).

A *tagged* index keys rows by ``(tag, id)`` pairs: several tables (tag = the
table's number) share one index and one set of row tensors (see
:mod:`streamrec.model.tables.group`). The same id under two tags gets two rows.

Hashing and probes run as torch operators (:mod:`streamrec.native`), one loop
over the ids each.
"""

from __future__ import annotations

import torch

from streamrec import native
from streamrec.model.tables.reserve import ReservedArray

__all__ = ["IdIndex"]

_LOW = 0xFFFFFFFF
_DELETED = 1 << 32  # a slot whose row part is 0 but is not empty
_MAX_CAP_BITS = 15  # a segment's most slots: 2^15 (256 KiB)
_MIN_CAP_BITS = 6
_HARD = 0.85  # a segment never gets fuller: an insert grows it first
_FLOOR = 0.5  # growth ahead of need takes segments at least this full, fullest first
# Entries growth ahead of need may move per entry inserted. Segments filled in
# step split in step: all 2^k of them must split while inserts take them from
# _FLOOR to _HARD, ~1.4 moves per insert; at 1.5 bursts of forced growth still
# came (1.2M entries in one 48k-insert step at 14M rows), at 3 none (153k at most).
_CREDIT = 3.0
_MAX_CREDIT = 4 << _MAX_CAP_BITS
_MAX_ROWS = (1 << 31) - 1  # free rows are kept as int32
# Rows reserved per index by default (address space, not memory).
DEFAULT_ROW_LIMIT = 1 << 28


class IdIndex:
    """Maps int64 ids to row ids; rows are reused after removal.

    Not thread-safe: the owner serialises calls.
    """

    def __init__(self, initial_slots: int = 1024, tagged: bool = False,
                 row_limit: int = DEFAULT_ROW_LIMIT) -> None:
        self.tagged = tagged
        self.row_limit = row_limit
        # Segments: enough for row_limit rows at the lowest load a split leaves.
        stride = 1 << _MAX_CAP_BITS
        self._segment_limit = max(4, int(row_limit / (_HARD / 2 * stride)) + 2)
        self._slots = ReservedArray(torch.int64, self._segment_limit * stride)
        self._ids = ReservedArray(torch.int64, row_limit)
        self._tags = ReservedArray(torch.int16, row_limit if tagged else 1)
        bits = max(_MIN_CAP_BITS, (max(16, initial_slots) - 1).bit_length())
        global_bits = max(0, bits - _MAX_CAP_BITS)
        n = 1 << global_bits
        self._global_bits = global_bits
        self._directory = torch.arange(n, dtype=torch.int64)
        meta = max(16, 2 * n)
        self._depth = torch.zeros(meta, dtype=torch.int64)
        self._depth[:n] = global_bits
        self._cap_bits = torch.zeros(meta, dtype=torch.int64)
        self._cap_bits[:n] = min(bits, _MAX_CAP_BITS)
        self._used = torch.zeros(meta, dtype=torch.int64)  # full + deleted slots
        self._live = torch.zeros(meta, dtype=torch.int64)
        self._segments = n
        self._slots.ensure(n * stride)
        self._credit = 0.0
        self.moved = 0  # entries re-placed by growth, ever (what growth costs)
        self._next_row = 0
        self._free_rows = torch.empty(0, dtype=torch.int32)
        self._size = 0
        self._ensure_rows(1)  # (the torch probes read row 0 for empty slots too)

    def __len__(self) -> int:
        return self._size

    @property
    def row_capacity(self) -> int:
        """One past the largest row id ever handed out."""
        return self._next_row

    @property
    def slots(self) -> int:
        return int(self._capacities().sum())

    @property
    def row_ids(self) -> torch.Tensor:
        """The id of each row (rows ``0..row_capacity-1`` are meaningful)."""
        return self._ids.data

    @property
    def row_tags(self) -> torch.Tensor:
        """The tag of each row (int16; -1 for a free row) of a tagged index."""
        return self._tags.data

    def _capacities(self) -> torch.Tensor:
        return torch.ones(self._segments, dtype=torch.int64) << self._cap_bits[: self._segments]

    def memory_bytes(self) -> int:
        """Everything the index holds: slots, keys, tags, free list, directory, segment counters."""
        slot_bytes = int(self._capacities().sum()) * 8
        meta = 4 * self._depth.numel() * 8 + self._directory.numel() * 8
        return (slot_bytes + self._ids.nbytes() + (self._tags.nbytes() if self.tagged else 0)
                + self._free_rows.numel() * 4 + meta)

    # Hashing and probing ---------------------------------------------------------------

    def _check_tags(self, tags: torch.Tensor | None) -> None:
        if self.tagged and tags is None:
            raise ValueError("a tagged IdIndex needs tags with every id")

    def _hash(self, ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        return native.index_hash(ids, tags if self.tagged else None)

    def _segment_of(self, h: torch.Tensor) -> torch.Tensor:
        g = self._global_bits
        return self._directory.index_select(0, h >> (32 - g)) if g else torch.zeros_like(h)

    def _layout(self) -> tuple[torch.Tensor, ...]:
        return (self._slots.data, self._directory, self._depth, self._cap_bits)

    def _find(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Slot of each id (of each ``(tag, id)`` in a tagged index), or -1 where absent."""
        self._check_tags(tags)
        tags = tags if self.tagged else None
        return native.index_find(*self._layout(), self._global_bits, 1 << _MAX_CAP_BITS,
                                 self._ids.data, self._tags.data if self.tagged else None,
                                 ids, tags)

    def _place(self, values: torch.Tensor) -> None:
        """Write slot values (hash over row + 1) of keys known to be absent into free slots;
        every target segment has room (see _make_room)."""
        if not values.numel():
            return
        native.index_place(*self._layout(), self._global_bits, 1 << _MAX_CAP_BITS,
                           self._used, self._live, values)

    # Growth -----------------------------------------------------------------------------

    def _make_room(self, h: torch.Tensor) -> None:
        """Grow every segment that the hashes ``h`` would fill past _HARD."""
        while h.numel():
            n = self._segments
            need = torch.bincount(self._segment_of(h), minlength=n)[:n]
            over = torch.nonzero(self._used[:n] + need > _HARD * self._capacities()).reshape(-1)
            if not over.numel():
                return
            for s in over.tolist():
                self._grow(s, int(need[s]))

    def _grow_ahead(self, inserted: int) -> None:
        """Grow the fullest segments, moving about _CREDIT entries per entry inserted."""
        self._credit = min(self._credit + _CREDIT * inserted, _MAX_CREDIT)
        while self._credit > 0:
            n = self._segments
            load = self._used[:n].to(torch.float64) / self._capacities()
            s = int(torch.argmax(load))
            if float(load[s]) < _FLOOR:
                return
            self._grow(s, 0)

    def _grow(self, s: int, need: int) -> None:
        """Rebuild segment ``s`` without its deleted slots, to take ``need`` more entries:
        in place when deleted slots were what filled it, else at twice the slots,
        else (at 2^15 slots) split in two."""
        slots = self._slots.data
        stride = 1 << _MAX_CAP_BITS
        cap_bits = int(self._cap_bits[s])
        block = slots[s * stride: s * stride + (1 << cap_bits)]
        values = block[(block & _LOW) != 0].clone()
        live = values.numel()
        if live + need >= _HARD / 2 * (1 << cap_bits):
            if cap_bits < _MAX_CAP_BITS:
                cap_bits += 1
                self._cap_bits[s] = cap_bits
            else:
                self._split(s)
        slots[s * stride: s * stride + (1 << cap_bits)] = 0
        self._used[s] = self._live[s] = 0
        self._place(values)
        self._credit -= live
        self.moved += live

    def _split(self, s: int) -> None:
        """Give half of segment ``s``'s hash range to a new segment (both empty after)."""
        depth = int(self._depth[s]) + 1
        if depth + _MAX_CAP_BITS > 32:
            raise RuntimeError(f"IdIndex: segment {s} cannot split further "
                               f"({self._segments} segments)")
        t = self._segments
        if t >= self._segment_limit:
            self._segment_limit *= 2  # the slot array then grows by copying (logged)
        self._slots.ensure((t + 1) << _MAX_CAP_BITS)
        if t >= self._used.numel():
            for name in ("_depth", "_cap_bits", "_used", "_live"):
                old = getattr(self, name)
                setattr(self, name, torch.cat([old, torch.zeros_like(old)]))
        self._segments = t + 1
        if depth > self._global_bits:
            self._directory = self._directory.repeat_interleave(2)
            self._global_bits += 1
        g = self._global_bits
        entries = torch.arange(1 << g)
        upper = ((entries >> (g - depth)) & 1) == 1
        self._directory[(self._directory == s) & upper] = t
        self._depth[s] = self._depth[t] = depth
        self._cap_bits[t] = _MAX_CAP_BITS
        self._slots.data[t << _MAX_CAP_BITS: (t + 1) << _MAX_CAP_BITS] = 0
        self._used[t] = self._live[t] = 0

    # Rows ---------------------------------------------------------------------------

    def _take_rows(self, n: int) -> torch.Tensor:
        reuse = min(n, self._free_rows.numel())
        if self._next_row + n - reuse > _MAX_ROWS:
            raise RuntimeError(f"IdIndex: more than {_MAX_ROWS} rows (row ids are int32)")
        taken = self._free_rows[self._free_rows.numel() - reuse:].to(torch.int64)
        self._free_rows = self._free_rows[: self._free_rows.numel() - reuse]
        fresh = torch.arange(self._next_row, self._next_row + n - reuse, dtype=torch.int64)
        self._next_row += n - reuse
        self._ensure_rows(self._next_row)
        return torch.cat([taken, fresh])

    def _ensure_rows(self, n: int) -> None:
        self._ids.ensure(n)
        if self.tagged:
            self._tags.ensure(n)

    def _add(self, ids: torch.Tensor, tags: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Key ``rows`` by ``ids`` (absent and unique) and index them."""
        self._ids.data.index_copy_(0, rows, ids)
        if self.tagged:
            assert tags is not None
            self._tags.data.index_copy_(0, rows, tags.to(torch.int16))
        h = self._hash(ids, tags)
        self._make_room(h)
        self._place((h << 32) | (rows + 1))
        self._size += ids.numel()
        self._grow_ahead(ids.numel())

    def insert(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Give a row to each id of ``ids`` (unique, all absent); returns the rows."""
        self._check_tags(tags)
        if ids.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        if self.tagged:
            assert tags is not None
            if int(tags.min()) < 0 or int(tags.max()) > torch.iinfo(torch.int16).max:
                raise ValueError(f"IdIndex: tags must be in 0..32767, got {tags.min()}.."
                                 f"{tags.max()}")
        rows = self._take_rows(ids.numel())
        self._add(ids, tags, rows)
        return rows

    def lookup(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Row of each id (any shape of int64), -1 where the id has no row."""
        flat = ids.reshape(-1)
        slot = self._find(flat, None if tags is None else tags.reshape(-1))
        rows = (self._slots.data.index_select(0, slot.clamp(min=0)) & _LOW) - 1
        return rows.masked_fill_(slot < 0, -1).reshape(ids.shape)

    def lookup_or_insert(self, ids: torch.Tensor, admit: torch.Tensor | None = None,
                         tags: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of unique ``ids`` (of ``(tags[i], ids[i])`` in a tagged index),
        inserting absent ids where ``admit`` is True.

        Returns ``(rows, new)``: rows (-1 for absent, not admitted ids) and a
        mask of the ids that got a new row in this call.
        """
        rows = self.lookup(ids, tags)
        new = rows < 0
        if admit is not None:
            new &= admit
        if bool(new.any()):
            rows[new] = self.insert(ids[new], None if tags is None else tags[new])
        return rows, new

    def remove(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Remove ids (absent ones are ignored); returns the freed rows."""
        slot = self._find(ids.reshape(-1), None if tags is None else tags.reshape(-1))
        slot = torch.unique(slot[slot >= 0])
        slots = self._slots.data
        rows = (slots.index_select(0, slot) & _LOW) - 1
        slots.index_fill_(0, slot, _DELETED)
        self._live -= torch.bincount(slot >> _MAX_CAP_BITS, minlength=self._live.numel())
        if self.tagged:
            self._tags.data.index_fill_(0, rows, -1)
        self._free_rows = torch.cat([self._free_rows, rows.to(torch.int32)])
        self._size -= int(slot.numel())
        return rows

    def _live_rows(self) -> torch.Tensor:
        live = torch.ones(self._next_row, dtype=torch.bool)
        live[self._free_rows.to(torch.int64)] = False
        return torch.nonzero(live).reshape(-1)

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``(ids, rows)`` currently held (copies)."""
        rows = self._live_rows()
        return self._ids.data.index_select(0, rows), rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        rows = self._live_rows()
        state = {"ids": self._ids.data.index_select(0, rows), "rows": rows,
                 "free_rows": self._free_rows.to(torch.int64),
                 "next_row": torch.tensor(self._next_row)}
        if self.tagged:
            state["tags"] = self._tags.data.index_select(0, rows).to(torch.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> IdIndex:
        """An index equal to the one ``state_dict`` came from (tagged if it was)."""
        ids, rows, tags = state["ids"], state["rows"], state.get("tags")
        index = cls(initial_slots=max(16, int(ids.numel() / _FLOOR)), tagged=tags is not None)
        index._next_row = int(state["next_row"])
        index._free_rows = state["free_rows"].to(torch.int32)
        index._ensure_rows(index._next_row)
        if ids.numel():
            index._add(ids, tags, rows)
        return index

"""A collisionless, vectorized id → row index for raw int64 ids.

Open addressing with linear probing over power-of-two slot arrays: a batch of
ids is resolved in a few torch passes over the still-unresolved ids, never
with a per-id Python loop, or by one loop in C (:mod:`streamrec.native`) over
the same arrays, hashed the same way. Keys are the raw ids
themselves (no sentinel value is stolen from the id space: slot state lives in
a separate byte array), so any two distinct ids, including negative and
extreme ones, always get distinct rows. This is the property Monolith's
Cuckoo hash table gives and modulo-hashed static tables lack (Monolith §3.1).

Rows are dense integers ``0 .. capacity-1`` handed out from a free list, so the
caller can keep row-aligned tensors (weights, optimizer state, timestamps).

A *tagged* index keys rows by ``(tag, id)`` pairs instead: several tables (tag =
the table's number) share one index and one set of row tensors, so a training
step resolves every feature's ids in one pass instead of one pass per table
(see :mod:`streamrec.model.tables.group`). The same id under two tags gets two rows.
"""

from __future__ import annotations

import torch

from streamrec import native

__all__ = ["IdIndex"]

_EMPTY, _FULL, _DELETED = 0, 1, 2
# Fibonacci hashing multiplier (2^64 / golden ratio), as a signed int64.
_MULT = -7046029254386353131
_MAX_LOAD = 0.5
# Mixes the tag into the slot hash of a tagged index (another odd constant).
_TAG_MULT = 0x2545F4914F6CDD1D


def _slot_hash(ids: torch.Tensor, bits: int) -> torch.Tensor:
    # Multiplicative hashing: the top `bits` bits of id * MULT (mod 2^64) are
    # well mixed even for sequential or low-entropy ids. Arithmetic shift on
    # int64 drags the sign bit in, hence the mask.
    return ((ids * _MULT) >> (64 - bits)) & ((1 << bits) - 1)


class IdIndex:
    """Maps int64 ids to row numbers; rows are reused after removal.

    Not thread-safe: the owner serialises calls.
    """

    def __init__(self, initial_slots: int = 1024, tagged: bool = False) -> None:
        self.tagged = tagged
        bits = max(4, (max(16, initial_slots) - 1).bit_length())
        self._alloc_slots(bits)
        self._next_row = 0
        self._free_rows = torch.empty(0, dtype=torch.int64)
        self._size = 0

    def _alloc_slots(self, bits: int) -> None:
        self._bits = bits
        n = 1 << bits
        self._keys = torch.zeros(n, dtype=torch.int64)
        self._tags = torch.zeros(n if self.tagged else 0, dtype=torch.int64)
        self._vals = torch.full((n,), -1, dtype=torch.int64)
        self._state = torch.zeros(n, dtype=torch.int8)
        self._claim = torch.full((n,), -1, dtype=torch.int64)  # scratch for _place
        self._used = 0  # FULL + DELETED slots: what lengthens probe chains

    def __len__(self) -> int:
        return self._size

    @property
    def row_capacity(self) -> int:
        """One past the largest row number ever handed out."""
        return self._next_row

    @property
    def slots(self) -> int:
        return 1 << self._bits

    def memory_bytes(self) -> int:
        return (self._keys.numel() * 8 + self._tags.numel() * 8 + self._vals.numel() * 8
                + self._state.numel() + self._free_rows.numel() * 8)

    def _key_tags(self, tags: torch.Tensor | None) -> torch.Tensor | None:
        """The tag of each slot (None for an untagged index), where ``tags`` come with
        the ids; ValueError if a tagged index gets ids without them."""
        if not self.tagged:
            return None
        if tags is None:
            raise ValueError("a tagged IdIndex needs tags with every id")
        return self._tags

    def _hash(self, ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        # (Callers checked the tags with _key_tags.)
        if self.tagged:
            assert tags is not None
            return _slot_hash(ids + tags * _TAG_MULT, self._bits)
        return _slot_hash(ids, self._bits)

    def _find(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Slot of each id (of each ``(tag, id)`` in a tagged index), or -1 where absent."""
        key_tags = self._key_tags(tags)
        if native.available() and ids.numel():
            return native.index_find(self._keys, key_tags, self._state, self._bits, ids, tags)
        # index_select, not advanced indexing: several times faster on CPU.
        mask = (1 << self._bits) - 1
        slot = torch.full_like(ids, -1)
        todo = torch.arange(ids.numel())
        pos = self._hash(ids, tags)
        while todo.numel():
            state = self._state.index_select(0, pos)
            hit = (state == _FULL) & (self._keys.index_select(0, pos) == ids)
            if self.tagged:
                assert tags is not None
                hit &= self._tags.index_select(0, pos) == tags
            found = torch.nonzero(hit).reshape(-1)
            slot.index_copy_(0, todo.index_select(0, found), pos.index_select(0, found))
            # A probe chain ends at an EMPTY slot; DELETED slots are walked over.
            go_on = torch.nonzero(~hit & (state != _EMPTY)).reshape(-1)
            todo, pos, ids = (t.index_select(0, go_on) for t in (todo, pos, ids))
            if tags is not None:
                tags = tags.index_select(0, go_on)
            pos = (pos + 1) & mask
        return slot

    def lookup(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Row of each id (any shape of int64), -1 where the id has no row."""
        flat = ids.reshape(-1)
        slot = self._find(flat, None if tags is None else tags.reshape(-1))
        rows = self._vals.index_select(0, slot.clamp(min=0))
        return rows.masked_fill_(slot < 0, -1).reshape(ids.shape)

    def _take_rows(self, n: int) -> torch.Tensor:
        reuse = min(n, self._free_rows.numel())
        taken = self._free_rows[self._free_rows.numel() - reuse:]
        self._free_rows = self._free_rows[: self._free_rows.numel() - reuse]
        fresh = torch.arange(self._next_row, self._next_row + n - reuse, dtype=torch.int64)
        self._next_row += n - reuse
        return torch.cat([taken, fresh])

    def _place(self, ids: torch.Tensor, rows: torch.Tensor,
               tags: torch.Tensor | None = None) -> None:
        """Write ids known to be absent and unique into free slots."""
        key_tags = self._key_tags(tags)
        if native.available() and ids.numel():
            self._used += native.index_place(self._keys, key_tags, self._vals, self._state,
                                             self._bits, ids, tags, rows)
            return
        mask = (1 << self._bits) - 1
        pos = self._hash(ids, tags)
        todo = torch.arange(ids.numel())
        claim = self._claim  # all -1 between calls
        while todo.numel():
            free = torch.nonzero(self._state.index_select(0, pos) != _FULL).reshape(-1)
            # Several ids may reach the same free slot in one pass: one wins
            # (whichever write lands last), the others probe on.
            cand_pos, cand = pos.index_select(0, free), todo.index_select(0, free)
            claim.index_copy_(0, cand_pos, cand)
            won = torch.nonzero(claim.index_select(0, cand_pos) == cand).reshape(-1)
            win_pos, win = cand_pos.index_select(0, won), cand.index_select(0, won)
            self._used += int((self._state.index_select(0, win_pos) == _EMPTY).sum())
            self._keys.index_copy_(0, win_pos, ids.index_select(0, win))
            if self.tagged:
                assert tags is not None
                self._tags.index_copy_(0, win_pos, tags.index_select(0, win))
            self._vals.index_copy_(0, win_pos, rows.index_select(0, win))
            self._state.index_fill_(0, win_pos, _FULL)
            claim.index_fill_(0, cand_pos, -1)
            placed = torch.zeros(todo.numel(), dtype=torch.bool)
            placed.index_fill_(0, free.index_select(0, won), True)
            rest = torch.nonzero(~placed).reshape(-1)
            todo, pos = todo.index_select(0, rest), (pos.index_select(0, rest) + 1) & mask

    def _maybe_grow(self, incoming: int) -> None:
        if self._used + incoming <= _MAX_LOAD * (1 << self._bits):
            return
        live = self._state == _FULL
        keys, vals = self._keys[live], self._vals[live]
        tags = self._tags[live] if self.tagged else None
        bits = self._bits
        # Rehash in place of tombstones when they are what fills the table;
        # double otherwise.
        while keys.numel() + incoming > _MAX_LOAD * (1 << bits) * 0.5:
            bits += 1
        self._alloc_slots(bits)
        self._place(keys, vals, tags)

    def insert(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Give a row to each id of ``ids`` (unique, all absent); returns the rows."""
        if ids.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        self._maybe_grow(ids.numel())
        rows = self._take_rows(ids.numel())
        self._place(ids, rows, tags)
        self._size += ids.numel()
        return rows

    def lookup_or_insert(self, ids: torch.Tensor, admit: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of unique ``ids``, inserting absent ids where ``admit`` is True.

        Returns ``(rows, new)``: rows (-1 for absent, not admitted ids) and a
        mask of the ids that got a new row in this call.
        """
        rows = self.lookup(ids)
        new = rows < 0
        if admit is not None:
            new &= admit
        if bool(new.any()):
            rows[new] = self.insert(ids[new])
        return rows, new

    def remove(self, ids: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Remove ids (absent ones are ignored); returns the freed rows."""
        slot = self._find(ids.reshape(-1), None if tags is None else tags.reshape(-1))
        slot = torch.unique(slot[slot >= 0])
        rows = self._vals[slot]
        self._state[slot] = _DELETED
        self._vals[slot] = -1
        self._free_rows = torch.cat([self._free_rows, rows])
        self._size -= int(slot.numel())
        return rows

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``(ids, rows)`` currently held (copies)."""
        live = self._state == _FULL
        return self._keys[live].clone(), self._vals[live].clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        live = self._state == _FULL
        state = {"ids": self._keys[live].clone(), "rows": self._vals[live].clone(),
                 "free_rows": self._free_rows.clone(), "next_row": torch.tensor(self._next_row)}
        if self.tagged:
            state["tags"] = self._tags[live].clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> IdIndex:
        """An index equal to the one ``state_dict`` came from (tagged if it was)."""
        ids, rows, tags = state["ids"], state["rows"], state.get("tags")
        index = cls(initial_slots=max(16, int(ids.numel() / _MAX_LOAD * 2)),
                    tagged=tags is not None)
        index._next_row = int(state["next_row"])
        index._free_rows = state["free_rows"].clone()
        index._place(ids, rows, tags)
        index._size = int(ids.numel())
        return index

"""Frequency filter: admit an id only after it has been seen ``min_count`` times.

Monolith (§3.2.1) filters ids by occurrence count before they get an
embedding, because most ids in a long-tailed stream are seen a handful of
times and their rows would never train. Counting every id exactly costs
memory proportional to the id space, which is what a dynamic table is meant
to avoid. A count-min sketch (Cormode & Muthukrishnan 2005) counts in fixed
memory: ``depth`` rows of ``width`` saturating counters. It never
under-counts, so an id that has truly been seen ``min_count`` times is
always admitted; hash collisions can only admit an id early.

Counts age: once the sketch has absorbed about ``width`` increments since the
last halving, every counter is halved. Without that, after a long stream most
counters of a fixed-size sketch exceed ``min_count`` and the filter admits
everything; with it, the filter asks for ``min_count`` recent sightings, as
Monolith's sliding filter does.
"""

from __future__ import annotations

import torch

from streamrec.model.tables.sort import unique

__all__ = ["FrequencyFilter"]

# Odd 64-bit multipliers, one per sketch row (signed int64 form).
_MULTIPLIERS = (
    -7046029254386353131, 0x2545F4914F6CDD1D, -4658895280553007687, 0x27D4EB2F165667C5,
    0x165667B19E3779F9, 0x61C8864680B583EB, 0x5851F42D4C957F2D, 0x14057B7EF767814F,
)


class FrequencyFilter:
    """A count-min sketch deciding which ids are admitted to a table.

    ``min_count <= 1`` admits every id at first sight and allocates nothing.
    With ``tags > 1`` it holds one independent sketch per tag (per table of a
    :class:`~streamrec.model.tables.group.TableGroup`), updated together in one pass.
    """

    def __init__(self, min_count: int, width: int = 1 << 20, depth: int = 2,
                 tags: int = 1) -> None:
        self.min_count = min_count
        self.enabled = min_count > 1
        self.bits = max(6, (width - 1).bit_length())
        self.depth = depth
        self.tags = tags
        n = (1 << self.bits) if self.enabled else 0
        # int16 saturates well above any sensible min_count.
        self.counts = torch.zeros((tags, depth, n), dtype=torch.int16)
        self._since_decay = torch.zeros(tags, dtype=torch.int64)

    @property
    def width(self) -> int:
        return 1 << self.bits

    def memory_bytes(self) -> int:
        return self.counts.numel() * self.counts.element_size()

    def _slots(self, ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        """``[depth, len(ids)]`` positions in the flattened ``counts``."""
        mask = (1 << self.bits) - 1
        base = torch.arange(self.depth).unsqueeze(1) * self.width
        if tags is not None:
            base = base + (tags * (self.depth * self.width)).unsqueeze(0)
        return torch.stack([((ids * _MULTIPLIERS[d]) >> (64 - self.bits)) & mask
                            for d in range(self.depth)]) + base

    def observe(self, ids: torch.Tensor, counts: torch.Tensor,
                tags: torch.Tensor | None = None) -> torch.Tensor:
        """Count ``counts[i]`` sightings of unique ``ids[i]``; returns the admit mask.

        An id is admitted when its estimated count, this batch included,
        reaches ``min_count``. ``tags[i]`` picks the sketch (``(tag, id)``
        pairs unique) when the filter holds several.
        """
        if not self.enabled:
            return torch.ones(ids.shape, dtype=torch.bool)
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        flat = self.counts.view(-1)
        slots = self._slots(ids, tags).reshape(-1)
        add = counts.to(torch.int32).repeat(self.depth)
        # Touch only the slots this batch hits: O(ids), not O(width).
        # Colliding ids in one batch share a slot, so sum their adds first.
        hit, inverse, _ = unique(slots)
        total = torch.zeros(hit.numel(), dtype=torch.int32).index_add_(0, inverse, add)
        updated = (flat.index_select(0, hit).to(torch.int32) + total).clamp_(
            max=torch.iinfo(torch.int16).max)
        flat.index_copy_(0, hit, updated.to(torch.int16))
        estimate = updated.index_select(0, inverse).view(self.depth, -1).amin(dim=0)
        if tags is None:
            self._since_decay[0] += int(counts.sum())
        else:
            self._since_decay.index_add_(0, tags, counts.to(torch.int64))
        full = torch.nonzero(self._since_decay >= self.width).reshape(-1)
        if full.numel():
            self.counts[full] = self.counts[full].div(2, rounding_mode="floor")
            self._since_decay[full] = 0
        return estimate >= self.min_count

    def state_dict(self, tag: int = 0) -> dict[str, torch.Tensor]:
        """One sketch's state (tag ``tag``), in the single-table format."""
        return {"counts": self.counts[tag].clone(), "since_decay": self._since_decay[tag].clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor], tag: int = 0) -> None:
        if "counts" not in state:
            raise ValueError("the checkpoint has no frequency-filter state (min_count changed?)")
        if state["counts"].shape != self.counts.shape[1:]:
            raise ValueError(
                f"filter state shape {tuple(state['counts'].shape)} does not match "
                f"{tuple(self.counts.shape[1:])} (min_count/filter_width/filter_depth changed?)")
        self.counts[tag].copy_(state["counts"])
        self._since_decay[tag] = int(state["since_decay"])

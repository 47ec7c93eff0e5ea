"""Shapes of the torch.ops.streamrec operators' outputs for FakeTensor tracing
(torch.compile, torch.library.opcheck): no data is read."""

from __future__ import annotations

import torch
from torch.library import register_fake

__all__: list[str] = []


@register_fake("streamrec::fm_head")
def _fm_head(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor
             ) -> torch.Tensor:
    return rows.new_empty(rows.shape[1])


@register_fake("streamrec::fm_head_forward")
def _fm_head_forward(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return rows.new_empty(rows.shape[1]), rows.new_empty((rows.shape[1], rows.shape[2] - 1))


@register_fake("streamrec::fm_head_backward")
def _fm_head_backward(rows: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                      sums: torch.Tensor, grad: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_extra = torch.empty_like(extra) if extra is not None else rows.new_empty(0)
    return rows.new_empty(rows.shape), grad_extra, torch.empty_like(weight)


@register_fake("streamrec::gather_rows")
def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return table.new_empty((index.shape[0], table.shape[1]))


@register_fake("streamrec::scatter_add_rows")
def _scatter_add_rows(grad: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    return grad.new_empty((n_rows, grad.shape[1]))


@register_fake("streamrec::history_prefix")
def _history_prefix(stored: torch.Tensor, inverse: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    return stored.new_empty((inverse.shape[0], 2)), stored.new_empty(stored.shape)


@register_fake("streamrec::unique_pairs")
def _unique_pairs(ids: torch.Tensor, tags: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = torch.library.get_ctx().new_dynamic_size()  # how many pairs are unique: data
    return ids.new_empty(n), ids.new_empty(n), ids.new_empty(ids.shape), ids.new_empty(n)


@register_fake("streamrec::index_hash")
def _index_hash(ids: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
    return ids.new_empty(ids.shape)


@register_fake("streamrec::index_find")
def _index_find(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
                cap_bits: torch.Tensor, global_bits: int, stride: int, row_ids: torch.Tensor,
                row_tags: torch.Tensor | None, ids: torch.Tensor, tags: torch.Tensor | None
                ) -> torch.Tensor:
    return ids.new_empty(ids.shape)


@register_fake("streamrec::index_place")
def _index_place(slots: torch.Tensor, directory: torch.Tensor, depth: torch.Tensor,
                 cap_bits: torch.Tensor, global_bits: int, stride: int, used: torch.Tensor,
                 live: torch.Tensor, values: torch.Tensor) -> None:
    return None


@register_fake("streamrec::id_normal")
def _id_normal(ids: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    return ids.new_empty((ids.shape[0], dim), dtype=torch.float32)


@register_fake("streamrec::wide_learn")
def _wide_learn(state: torch.Tensor, offsets: torch.Tensor, slots: torch.Tensor,
                learnable: torch.Tensor, base: torch.Tensor, outcomes: torch.Tensor,
                lr: float, acc0: float) -> tuple[torch.Tensor, torch.Tensor]:
    return base.new_empty(base.shape), torch.empty_like(state)

"""Synthetic id streams for benchmarks: Zipf-distributed ranks and raw 64-bit ids.

Real feature streams are long-tailed: a few ids take most of the traffic and
most ids are seen a handful of times (Monolith §3.2.1). Ranks here are drawn
from a truncated Zipf law by inverse-CDF sampling, then mapped to raw ids by a
bijective 64-bit mix, so ids look like production hashes (no locality a table
could exploit) and each feature gets its own id space.
"""

from __future__ import annotations

import torch

__all__ = ["ZipfSampler", "raw_ids"]


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64 finaliser constants (Steele et al. 2014), as signed int64.
_C1, _C2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
_SALT = _signed(0x9E3779B97F4A7C15)


def raw_ids(keys: torch.Tensor, space: int) -> torch.Tensor:
    """Non-negative raw ids for int64 ``keys`` in id space ``space`` (e.g. a feature index).

    A splitmix64 finaliser over ``key + space * salt``: bijective on 64 bits,
    then the sign bit is cleared (collisions have probability ~n²/2⁶⁴).
    """
    x = keys + space * _SALT
    x = x ^ ((x >> 30) & ((1 << 34) - 1))  # logical shift on int64
    x = x * _C1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _C2
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return x & ((1 << 63) - 1)


class ZipfSampler:
    """Ranks ``0 .. n-1`` with ``P(r) ∝ (r + 1) ** -alpha``."""

    def __init__(self, n: int, alpha: float) -> None:
        if n < 1 or alpha <= 0:
            raise ValueError(f"ZipfSampler needs n >= 1 and alpha > 0, got n={n}, alpha={alpha}")
        weights = torch.arange(1, n + 1, dtype=torch.float64).pow_(-alpha)
        self.cdf = weights.cumsum_(0)
        self.cdf /= self.cdf[-1].clone()
        self.n = n

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """int64 ranks of ``shape``."""
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        return torch.searchsorted(self.cdf, u).clamp_(max=self.n - 1)

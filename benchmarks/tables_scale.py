"""The scale mode of benchmarks/tables_throughput.py: tables grown to tens of millions of rows.

A long-tailed, admission-heavy stream, generated step by step from the seed
(so every arm sees the same ids without a data file of tens of millions of
ids): in each step and feature a fixed share of the ids are new and the rest
repeat earlier ids, rank ``floor(n * u ** tail)`` among the ``n`` introduced so
far (``u`` uniform), so the oldest ids are the head and most ids are seen a
handful of times. First ``grow`` steps with ``--grow-new-share`` new ids, enough
for the dynamic tables (every id admitted: ``--min-count 1``) to reach
``--scale`` live rows; then ``--steps`` measured steps with ``--new-share`` new
ids, at that size. Both phases are reported, step by step, side by side with
the static fused EBC on the same ids.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from benchmarks.report import quantile, step_stats
from benchmarks.zipf import raw_ids

__all__ = ["ScaleStream", "current_rss_mb", "scale_summary"]

MIN_BYTES_PER_ROW = "dim float32 weights + one float32 Adagrad scalar + the int64 id"


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class ScaleStream:
    """Step ``s``'s batch: ``ids [F, B]`` raw int64, ``dense [B, D]``, ``labels [B]``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.grow_new = max(1, round(args.batch * args.grow_new_share))
        self.measure_new = round(args.batch * args.new_share)
        per_step = args.features * self.grow_new
        self.grow_steps = math.ceil(args.scale / per_step)
        self.steps = self.grow_steps + args.warmup + args.steps
        g = torch.Generator().manual_seed(args.seed)
        self.w = torch.randn(args.dense, generator=g) / args.dense ** 0.5

    def phase(self, s: int) -> str:
        if s < self.grow_steps:
            return "grow"
        return "warmup" if s < self.grow_steps + self.args.warmup else "measure"

    def _introduced(self, s: int) -> tuple[int, int]:
        """(ids introduced per feature before step ``s``, new ids in step ``s``)."""
        g = min(s, self.grow_steps)
        before = g * self.grow_new + (s - g) * self.measure_new
        return before, self.grow_new if s < self.grow_steps else self.measure_new

    def batch(self, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.args
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + s)
        before, new = self._introduced(s)
        keys = torch.empty((a.features, a.batch), dtype=torch.int64)
        keys[:, :new] = torch.arange(before, before + new)
        if a.batch > new:
            u = torch.rand((a.features, a.batch - new), dtype=torch.float64, generator=g)
            keys[:, new:] = (u.pow_(a.tail) * max(1, before)).to(torch.int64)
        keys = keys[:, torch.randperm(a.batch, generator=g)]
        ids = raw_ids(keys, torch.arange(a.features, dtype=torch.int64).unsqueeze(1))
        dense = torch.randn((a.batch, a.dense), generator=g)
        labels = torch.bernoulli(torch.sigmoid(dense @ self.w - 1.0), generator=g)
        return ids, dense, labels


def scale_summary(results: dict[str, dict[str, Any]], args: argparse.Namespace
                  ) -> tuple[list[list[Any]], dict[str, float]]:
    """Rows of the per-phase table and the goal ratios of a scale run."""
    rows: list[list[Any]] = []
    for arm, r in results.items():
        for phase in ("grow", "measure"):
            st = step_stats(r["phase_seconds"][phase], args.batch)
            r[f"{phase}_stats"] = st
            rows.append([arm, phase, st["median_ex_s"], st["mean_ex_s"], st["median_step_ms"],
                         st["p99_step_ms"], st["max_step_ms"], r["peak_rss_mb"],
                         r["rows_at_end"]])
    ratios: dict[str, float] = {}
    if "dynamic" not in results:
        return rows, ratios
    d = results["dynamic"]
    minimal = args.dim * 4 + 4 + 8
    live = d["rows_at_end"]
    for phase in ("grow", "measure"):
        dyn = d[f"{phase}_stats"]
        if "static" in results:
            st = results["static"][f"{phase}_stats"]
            ratios[f"{phase}: dynamic/static median ex/s (goal >= 0.8)"] = \
                dyn["median_ex_s"] / st["median_ex_s"]
            ratios[f"{phase}: dynamic/static mean ex/s (goal >= 0.8)"] = \
                dyn["mean_ex_s"] / st["mean_ex_s"]
        ratios[f"{phase}: dynamic max/median step (goal <= 3)"] = \
            dyn["max_step_ms"] / dyn["median_step_ms"]
    ratios["dynamic live rows at end (goal >= 20M)"] = float(live)
    ratios["table bytes per live row"] = d["table_bytes"] / live
    ratios[f"table bytes per live row / minimal {minimal} (goal <= 1.5)"] = \
        d["table_bytes"] / live / minimal
    grown_rss = (d["rss_end_mb"] - d["rss_start_mb"]) * 2**20
    ratios["RSS growth per live row (bytes)"] = grown_rss / live
    ratios["RSS growth per live row / minimal"] = grown_rss / live / minimal
    ratios["100M rows by table bytes/row (GiB)"] = d["table_bytes"] / live * 1e8 / 2**30
    ratios["100M rows by RSS growth/row + RSS at start (GiB)"] = \
        (grown_rss / live * 1e8 + d["rss_start_mb"] * 2**20) / 2**30
    # Index growth work per step: entries re-placed (deterministic, unlike step times
    # on a shared machine), against the entries the index then held.
    moved = d["index_moved_per_step"]
    worst = max(range(len(moved)), key=moved.__getitem__)
    ratios["index entries moved: mean per step"] = sum(moved) / len(moved)
    ratios["index entries moved: most in one step"] = float(moved[worst])
    ratios["index entries moved: most in one step / live rows at end"] = moved[worst] / live
    # The largest step while growing and the rows the tables held then.
    grow = d["phase_seconds"]["grow"]
    if grow:
        worst = max(range(len(grow)), key=grow.__getitem__)
        ratios["grow: slowest step's index (of grow steps)"] = float(worst)
        ratios["grow: p99/median step"] = quantile(grow, 0.99) / quantile(grow, 0.5)
    return rows, ratios

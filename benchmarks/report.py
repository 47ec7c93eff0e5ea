"""What every benchmark script reports: machine, timing statistics, a table, a JSON file.

A benchmark result is only comparable with another taken on the same machine
under the same load, so each JSON file records the command line, the torch
thread count, the CPU model and core count, the Python and torch versions and
the date beside the figures (STYLE.md §12). Arms are compared as ratios
within one run because the shared machine is noisy.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "machine_info",
    "peak_rss_mb",
    "quantile",
    "step_stats",
    "format_table",
    "write_result",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def step_stats(step_seconds: Sequence[float], batch_size: int) -> dict[str, float]:
    """Throughput figures of a run of equal-size steps.

    ``median_ex_s`` is the typical step's rate; ``mean_ex_s`` is examples over
    total time, so it charges every stall (an eviction pass, a rehash) in full.
    """
    total = sum(step_seconds)
    median = quantile(step_seconds, 0.5)
    return {
        "steps": len(step_seconds),
        "median_step_ms": median * 1e3,
        "mean_step_ms": total / len(step_seconds) * 1e3,
        "p99_step_ms": quantile(step_seconds, 0.99) * 1e3,
        "max_step_ms": max(step_seconds) * 1e3,
        "median_ex_s": batch_size / median,
        "mean_ex_s": batch_size * len(step_seconds) / total,
    }


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats get thousands separators and at most 2 decimals."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3g}" if abs(v) < 1 else f"{v:,.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in
                        enumerate(zip(r, widths))) for r in text]
    return "\n".join(lines)


def _command(argv: Sequence[str]) -> str:
    """``argv`` as one would type it from the repository root: ``python -m benchmarks.x ...``."""
    first = re.sub(r"^.*?/benchmarks/(\w+)\.py$", r"-m benchmarks.\1", argv[0]) if argv else ""
    return " ".join(["python", first, *argv[1:]]).strip()


def write_result(name: str, figures: Mapping[str, Any], argv: Sequence[str] | None = None,
                 results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``figures`` with the command line and machine to ``results/<name>.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    doc = {
        "benchmark": name,
        "command": _command(sys.argv if argv is None else argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **figures,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path

"""Per-call cost of streamrec's compiled operators, against a baseline checkout.

Each arm runs in its own process with one checkout of the code on ``PYTHONPATH``:
``new`` this one, ``base`` the one given by ``--baseline`` (e.g. a worktree of
main: ``git worktree add --detach ../base main``). The arms alternate over
``--rounds``; each figure is the best round's microseconds per call, at a small
size (per-call overhead) and at a training step's size. The baseline may be the
ctypes build (its ``streamrec.native`` compiled at first use into a temporary
cache directory) or the torch operators.

    python -m benchmarks.native_ops --baseline ../base       # ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object], budget_s: float = 0.15) -> float:
    """Microseconds per call of ``fn``: the best of 5 runs of a loop of ~budget_s."""
    fn()
    n, started = 1, time.perf_counter()
    while time.perf_counter() - started < budget_s / 5:
        fn()
        n += 1
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def worker() -> dict[str, float]:
    """Times each operation with the streamrec on sys.path, through its own API."""
    import torch

    from streamrec import native
    from streamrec.model.tables.index import IdIndex

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops = hasattr(native, "fm_head")  # the torch operators, else the ctypes build
    if ops:
        fm_head = native.fm_head
    else:
        from streamrec.model.ctr import _FMHead

        fm_head = _FMHead.apply
    out: dict[str, float] = {}
    for batch in (64, 4096):
        rows = torch.randn(batch, 3, 9).transpose(0, 1).requires_grad_(True)
        extra = torch.randn(batch, 8, requires_grad=True)
        weight = torch.randn(4, 8, requires_grad=True)
        out[f"fm_head fwd B={batch}"] = _timed(lambda: fm_head(rows, extra, weight))
        out[f"fm_head fwd+bwd B={batch}"] = _timed(
            lambda: fm_head(rows, extra, weight).sum().backward())
    table = torch.randn(20_000, 9, requires_grad=True)
    for n in (256, 16_384):
        index = torch.randint(0, 20_000, (n,))
        out[f"gather_rows fwd n={n}"] = _timed(lambda: native.gather_rows(table, index))
        out[f"gather_rows fwd+bwd n={n}"] = _timed(
            lambda: native.gather_rows(table, index).sum().backward())
        ids = torch.randint(0, n // 2, (n,))
        tags = torch.randint(0, 3, (n,))
        out[f"unique_pairs n={n}"] = _timed(lambda: native.unique_pairs(ids, tags))
        stored = torch.rand(n // 2, 2)
        y = torch.randint(0, 2, (n,)).float()
        out[f"history_prefix n={n}"] = _timed(lambda: native.history_prefix(stored, ids, y))
        out[f"index_hash n={n}"] = _timed(lambda: native.index_hash(ids, tags))
        index_ = IdIndex(initial_slots=1 << 12, tagged=True)
        index_.insert(ids, tags)
        out[f"index_find n={n}"] = _timed(lambda: index_._find(ids, tags))
        out[f"id_normal n={n // 16} dim=8"] = _timed(
            lambda: native.id_normal(ids[: n // 16], 8, 12345))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="a checkout of the code to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker()))
        return 0
    trees = {"base": Path(args.baseline).resolve(), "new": ROOT}
    best: dict[str, dict[str, float]] = {arm: {} for arm in trees}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(args.rounds):
            for arm, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree), "STREAMREC_NATIVE_DIR": cache}
                done = subprocess.run([sys.executable, __file__, "--baseline", str(tree),
                                       "--worker"], env=env, cwd=tree, capture_output=True,
                                      text=True, check=True)
                for op, us in json.loads(done.stdout.splitlines()[-1]).items():
                    best[arm][op] = min(us, best[arm].get(op, float("inf")))
    from benchmarks.report import format_table, write_result

    ratios = {op: best["base"][op] / best["new"][op] for op in best["new"]}
    print(format_table(["operation", "base us/call", "new us/call", "base / new"],
                       [[op, f"{best['base'][op]:.1f}", f"{best['new'][op]:.1f}",
                         f"{ratios[op]:.2f}"] for op in best["new"]]))
    path = write_result("native_ops", {"rounds": args.rounds, "us_per_call": best,
                                       "base_over_new": ratios})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

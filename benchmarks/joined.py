"""Arms of benchmarks/quality.py that see a stream in production form, or score as serving does.

- ``served``: the labeled form, each example scored when it arrives (by the
  model of that moment, in the slices the training loop scores impressions
  in) and learned at once: what serving would show if every label were
  known at the impression. It separates what scoring at serving time costs
  from what the clicks' delay costs.
- ``joined-<mode>``: the production form (impressions, and clicks at their
  delays) through the training loop and the joiner with
  ``ingest.delayed_feedback = <mode>``; each impression's served-time score,
  taken when the joiner reports its label.

Each returns the probabilities in the labeled form's order (one per impression).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from streamrec.ingest.batch import Batcher
from streamrec.ingest.event import Event
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.joiner import Joiner
from streamrec.config import AppConfig
from streamrec.trainer.loop import MIN_SCORING_SLICE, TrainingLoop
from streamrec.trainer.trainer import OnlineTrainer

__all__ = ["served", "joined"]

Scored = tuple[list[float], float]


class _RecordingJoiner(Joiner):
    """A joiner that keeps each impression's served-time score, by event_id."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.scores: dict[str, float | None] = {}

    def take_outcomes(self, settled: bool = True) -> list[Event]:
        outcomes = super().take_outcomes(settled)
        for e in outcomes:
            self.scores[e.event_id] = e.predicted
        return outcomes


def served(events: Sequence[Event], config: AppConfig) -> Scored:
    """Labeled examples scored on arrival, then learned in the trainer's batches.

    As the training loop does with a joiner: each label reaches the history
    counts as it arrives, so an example is scored with every label before it.
    """
    t = OnlineTrainer.from_config(config)
    b = Batcher(config.model.sparse_features, config.model.dense_features)
    probs: list[float] = []
    pending: list[Event] = []
    observed: list[tuple[torch.Tensor, float]] = []
    started = time.perf_counter()
    at = 0
    while at < len(events):
        size = max(MIN_SCORING_SLICE, t.batch_size_now() - len(pending))
        part = list(events[at:at + size])
        at += len(part)
        if t.observes_outcomes:
            order = [e for e in part for _ in (0, 1)]  # each example asked, then learned
            outcomes = torch.zeros((len(order), 2))
            outcomes[1::2, 0] = 1.0
            outcomes[1::2, 1] = torch.tensor([e.label or 0.0 for e in part])
            batch = b.build(order)
            seen = t.observe(batch, outcomes)
            probs += seen.probs[0::2].tolist()
            observed += zip(seen.counts[1::2].unbind(0), seen.wide[1::2].tolist())
        else:
            probs += t.predict(b.build(part)).tolist()
        pending += part
        while len(pending) >= t.batch_size_now():
            size = t.batch_size_now()
            t.train_batch(b.build(pending[:size]), **_observed(observed[:size]))
            pending, observed = pending[size:], observed[size:]
    if pending:
        t.train_batch(b.build(pending), **_observed(observed))
    return probs, time.perf_counter() - started


def _observed(rows: list[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """``train_batch`` arguments for examples observed ahead of their step."""
    if not rows:
        return {}
    counts, wide = zip(*rows)
    return {"history": torch.stack(counts), "wide": torch.tensor(wide)}


def joined(events: Sequence[Event], production: Sequence[Event], config: AppConfig) -> Scored:
    """``production`` (impressions and clicks) through the loop; scores in ``events``' order."""
    ing = config.ingest
    t = OnlineTrainer.from_config(config)
    joiner = _RecordingJoiner(ing.action_types, ing.join_window_s, ing.negative_sample_rate,
                              max_pending=ing.join_max_pending,
                              delayed_feedback=ing.delayed_feedback,
                              elapsed_s=ing.fake_negative_delay_s)
    loop = TrainingLoop(t, IteratorSource(production), config, joiner=joiner)
    started = time.perf_counter()
    loop.run()
    seconds = time.perf_counter() - started
    scores = [joiner.scores.get(e.event_id) for e in events]
    missing = sum(s is None for s in scores)
    if missing:
        raise RuntimeError(f"{missing} impressions got no served-time score")
    return [float(s) for s in scores if s is not None], seconds

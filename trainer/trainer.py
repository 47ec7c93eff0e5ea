"""The online trainer: the test-then-train step and the state it updates.

Every batch is scored with the current parameters before it is learned from,
so the probabilities a step returns are honest out-of-sample predictions
(progressive validation, Blum et al. 1999; the "test-then-train" protocol of
river and MOA), which the loop records (:mod:`streamrec.trainer.quality`).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from streamrec.config import AppConfig, TrainerConfig
from streamrec.ingest.batch import Batch, KeyedJaggedTensor
from streamrec.model.tables.base import EmbeddingTable
from streamrec.model.tables.store import stores_of
from streamrec.trainer.collective import Collective
from streamrec.trainer.model_state import ModelState, build_model_state

__all__ = ["Observed", "OnlineTrainer", "StepResult"]

log = logging.getLogger(__name__)


class StepResult:
    """What one training step reports."""

    __slots__ = ("probs", "loss", "size", "skipped")

    def __init__(self, probs: torch.Tensor, loss: float, size: int,
                 skipped: bool = False) -> None:
        self.probs = probs  # [B] click probabilities scored before learning
        self.loss = loss
        self.size = size
        self.skipped = skipped  # nothing learned: the loss was not finite


class Observed(NamedTuple):
    """What :meth:`OnlineTrainer.observe` found for each example, before its own outcome."""

    counts: torch.Tensor  # [B, H, 2] history counts
    wide: torch.Tensor  # [B] wide logits
    probs: torch.Tensor  # [B] click probabilities (what an impression is served)


class OnlineTrainer:
    """Takes test-then-train steps on a :class:`ModelState` with Adam; keeps the counters.

    ``train_batch``, ``predict`` and readers of the parameters
    (:class:`~streamrec.trainer.parameters.TrainerParameters`, checkpoints)
    may run on different threads; ``lock`` makes each atomic with respect to
    the others.

    Under a distributed ``collective`` (torch.distributed initialised, e.g.
    by torchrun) every rank trains on its own slice of each global batch (of
    any size, empty included): embedding tables are sharded across ranks
    (:class:`DistributedEmbeddingTable`), dense gradients are all-reduced,
    and a step equals a single-rank step on the whole batch (the event-time
    clock included: the median of the whole batch's timestamps). Every rank
    must call ``train_batch`` the same number of times.
    """

    def __init__(self, state: ModelState, config: TrainerConfig,
                 collective: Collective | None = None) -> None:
        self.config = config
        self.collective = collective or Collective()
        self.model = state.model
        self.features = state.features
        self.dense_features = state.dense_features
        self.tables = state.tables
        self.embeddings = state.embeddings
        self.history = state.history
        self.wide = state.wide
        self.spec = state.spec
        self.optimizer = torch.optim.Adam(
            [*self.model.parameters(), *self.embeddings.parameters()], lr=config.dense_lr,
            fused=True)
        self.lock = threading.RLock()  # the publisher holds it across delta + snapshot
        self.examples = 0
        self.steps = 0
        self.skipped_steps = 0  # batches not learned from: loss not finite
        self.event_time_ms = 0

    @classmethod
    def from_config(cls, config: AppConfig, distributed: bool = False,
                    process_group: dist.ProcessGroup | None = None) -> OnlineTrainer:
        """The trainer of ``config``'s model, tables and trainer sections."""
        collective = Collective(distributed, process_group)
        state = build_model_state(config.model, config.table, config.trainer.seed, collective,
                                  config.feature_tables())
        return cls(state, config.trainer, collective)

    @property
    def distributed(self) -> bool:
        return self.collective.distributed

    def batch_size_now(self) -> int:
        """The next training batch's size: the warm-up schedule, then ``batch_size``."""
        cfg = self.config
        if not cfg.warmup_batch_size:
            return cfg.batch_size
        return min(cfg.batch_size, max(cfg.warmup_batch_size, self.examples // 4))

    def train_batch(self, batch: Batch, fake_negative: torch.Tensor | None = None,
                    duplicated_share: float = 1.0,
                    history: torch.Tensor | None = None,
                    wide: torch.Tensor | None = None) -> StepResult:
        """Score ``batch``, then take one optimizer step on it.

        ``fake_negative``: ``[B]`` bool, examples of the fake-negative method
        (``Event.fake_negative``), importance-weighted so that the expected
        loss is that of the true labels though a share ``f``
        (``duplicated_share``) of the clicked impressions is learned twice,
        first as a negative: a positive ``1 + p f``, a negative
        ``(1 - p)(1 + p f) / (1 - p + p f)``, ``p`` the model's current
        probability (no gradient through the weight). ``f = 1`` is FNW
        (Ktena et al. 2019); ``f < 1``, ES-DFM's weights (Yang et al. 2021)
        with one ``f`` for every example. ``history``: the ``[B, H, 2]``
        counts to learn with, whose outcomes :meth:`observe` stored already
        (in the wide terms too); without, the step computes the counts and
        stores the batch's outcomes itself, and the wide terms learn them in
        batch order. ``wide``: with ``history``, the ``[B]`` wide logits each
        example was scored with at :meth:`observe` (default: the stored
        ones). The probabilities returned include the wide terms.

        An empty batch changes nothing (no optimizer step, no step counted),
        except under ``distributed``, where every rank joins every step's
        collectives whether its slice of the batch holds examples or not.
        """
        if not len(batch) and not self.distributed:
            return StepResult(torch.empty(0), float("nan"), 0)
        with self.lock:
            return self._step(batch, fake_negative, duplicated_share, history, wide)

    def _step(self, batch: Batch, fake_negative: torch.Tensor | None,
              duplicated_share: float, observed: torch.Tensor | None,
              observed_wide: torch.Tensor | None) -> StepResult:
        # The trainer's clock (TTL expiry) is the running maximum of batch
        # medians: one event stamped hours ahead (a skewed producer clock)
        # cannot move it, and with it expire every row at once.
        stamps = self.collective.all_gather(batch.timestamps_ms)  # one per example
        total = stamps.numel()  # the global batch's size
        if total:
            self.event_time_ms = max(self.event_time_ms, int(stamps.median()))
        self.model.train()
        if self.steps == 0:
            self._init_bias(batch)
        pooled = self.embeddings.forward(batch.sparse, self.event_time_ms, train=True)
        history = observed if observed is not None else \
            self.history.counts(batch.sparse, batch.labels, self.event_time_ms)
        logits = self.model(pooled, batch.dense, history)
        # Negative down-sampling keeps a negative with probability r: each
        # kept one stands for 1/r negatives of the true stream, so it weighs
        # 1/r in the loss (importance weighting). The expected loss is then
        # the true stream's, and the predictions stay calibrated to it.
        # (Shifting each example's logit by its own -log(rate) would not:
        # positives carry rate 1, and the fixed point over-predicts clicks.)
        sampled = batch.sample_rates.clamp(min=1e-6).reciprocal()
        logits = logits + self.model.in_batch(batch.sparse, batch.labels, logits, sampled)
        weight = sampled
        if fake_negative is not None and bool(fake_negative.any()):
            p = torch.sigmoid(logits.detach())
            boost = 1 + p * duplicated_share
            fnw = torch.where(batch.labels > 0, boost,
                              (1 - p) * boost / (1 - p + p * duplicated_share))
            weight = torch.where(fake_negative, sampled * fnw, sampled)
        loss_sum = F.binary_cross_entropy_with_logits(logits, batch.labels, weight=weight,
                                                      reduction="sum")
        # The objective is the mean over the global batch. With several ranks
        # each contributes its sum over the global count, times the world size
        # because gradients are averaged over ranks: slices of any sizes (even
        # empty) then train exactly like one process on the whole batch.
        world = self.collective.world_size()
        objective = loss_sum * (world / max(total, 1))
        loss = loss_sum.detach() / max(len(batch), 1)  # reported: this rank's mean
        self.optimizer.zero_grad(set_to_none=True)
        (objective + self.embeddings.regularizer()).backward()
        with torch.no_grad():
            # The step's scalars travel with the dense gradients (one
            # all-reduce): whether this rank's objective is NaN or infinite
            # (then every rank skips the step together), and the weights
            # and weighted clicks of the click-rate prior.
            scalars = torch.stack([(~torch.isfinite(objective.detach())).to(weight.dtype),
                                   weight.sum(), (weight * batch.labels).sum()])
        summed = self.collective.average_gradients(
            [*self.model.parameters(), *self.embeddings.parameters()], scalars)
        if float(summed[0]) > 0:
            return self._skip(batch, loss)
        self.optimizer.step()
        self.embeddings.step()
        if observed is None:
            self.history.commit()
        wide = observed_wide if observed is not None and observed_wide is not None else \
            self._wide(batch, logits, sampled, fake_negative, duplicated_share,
                       learn=observed is None)
        with torch.no_grad():
            # Exponential moving average of the click rate, ~10k examples long.
            # (Weighted like the loss: the prior is the true stream's rate.)
            seen = summed[1:]
            keep = 0.9999 ** float(seen[0])
            prior = self.model.prior_ctr
            prior.mul_(keep).add_((1 - keep) * seen[1] / seen[0].clamp(min=1))
        self.embeddings.expire(self.event_time_ms)
        self.history.expire(self.event_time_ms)
        self.wide.expire(self.event_time_ms)
        probs = torch.sigmoid(logits.detach() + wide)
        self.examples += len(batch)
        self.steps += 1
        return StepResult(probs, float(loss), len(batch))

    def _wide(self, batch: Batch, logits: torch.Tensor, weights: torch.Tensor,
              fake_negative: torch.Tensor | None, duplicated_share: float,
              learn: bool) -> torch.Tensor:
        """``[B]``: the wide terms' logits of a training batch; with ``learn``,
        as each example found them, learning the examples in order.

        The deep part learns without them (the wide terms learn what it has
        not, event by event): ``logits`` are its, and stay as they are. A
        click on an impression learned before as a fake negative adds a click
        and ``1 - duplicated_share`` showings, as in :meth:`observe`.
        """
        if not self.wide.terms:
            return torch.zeros_like(logits)
        if not learn:
            return self.wide.logits(batch.sparse, self.event_time_ms)
        shown = weights
        if fake_negative is not None:
            again = fake_negative & (batch.labels > 0)
            shown = torch.where(again, weights * (1.0 - duplicated_share), weights)
        outcomes = torch.stack([shown, weights * batch.labels], dim=1)
        return self.wide.learn(batch.sparse, logits.detach(), outcomes, self.event_time_ms)

    def _skip(self, batch: Batch, loss: torch.Tensor) -> StepResult:
        """Learn nothing from a batch whose loss is not finite, and say so.

        One NaN step would put NaN into every dense weight through Adam's
        state, for good, and serving would get them at the next sync. The ids
        were looked up (admissions and last-seen times stand), but no weight,
        optimizer state, history count or metric moves.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.embeddings.discard()
        self.history.discard()
        self.skipped_steps += 1
        log.error("step %d: loss is not finite (%s); the batch of %d examples is skipped",
                  self.steps, float(loss), len(batch))
        return StepResult(torch.full((len(batch),), math.nan), float(loss), len(batch),
                          skipped=True)

    @torch.no_grad()
    def _init_bias(self, batch: Batch) -> None:
        # Start the global bias at the first batch's log-odds instead of 0:
        # Adam moves it by ~dense_lr per step, so from 0 it would take
        # hundreds of steps to reach a typical CTR's log-odds, and every
        # early prediction would be miscalibrated meanwhile. The rate is
        # corrected for negative down-sampling (each example stands for
        # 1/sample_rate examples of the true stream).
        weight = 1.0 / batch.sample_rates.clamp(min=1e-6)
        sums = self.collective.all_reduce(torch.stack([batch.labels.sum(), weight.sum()]))
        if float(sums[1]) <= 0:
            return
        rate = (sums[0] / sums[1]).clamp(0.01, 0.99)
        self.model.bias.fill_(float(torch.logit(rate)))
        self.model.prior_ctr.fill_(float(rate))

    @property
    def observes_outcomes(self) -> bool:
        """Whether outcomes can be learned before their step (:meth:`observe`):
        there are history features or wide terms, on one process."""
        return bool(self.history.features or self.wide.terms) and not self.distributed

    @torch.no_grad()
    def observe(self, batch: Batch, outcomes: torch.Tensor) -> Observed:
        """Store ``[B, 2]`` outcomes in the history counts and the wide terms now,
        in order, ahead of their step; score each example as it was reached.

        Returns the history counts and wide logits before each example's own
        outcome, which its step takes (``train_batch(history=..., wide=...)``),
        and the probabilities they give: what an impression with no outcome
        yet (a row of zeros) is served. Replicas get the counts and weights
        with the next delta, so labels reach serving without waiting for a
        batch to fill.
        """
        with self.lock:
            counts = self.history.observe(batch.sparse, outcomes, self.event_time_ms)
            logits = self._deep_logits(batch, counts)
            wide = self.wide.learn(batch.sparse, logits, outcomes, self.event_time_ms) \
                if self.wide.terms else torch.zeros_like(logits)
            return Observed(counts, wide, torch.sigmoid(logits + wide))

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """Click probabilities for ``batch`` without learning or admitting ids."""
        with self.lock:
            logits = self._deep_logits(
                batch, self.history.counts(batch.sparse, None, self.event_time_ms))
            if self.wide.terms:
                logits = logits + self.wide.logits(batch.sparse, self.event_time_ms)
            return torch.sigmoid(logits)

    def _deep_logits(self, batch: Batch, history: torch.Tensor | None) -> torch.Tensor:
        """``[B]``: the deep part's logits of ``batch`` with ``history`` counts (no learning)."""
        self.model.eval()
        pooled = self.embeddings.forward(batch.sparse, self.event_time_ms, train=False)
        return self.model(pooled, batch.dense, history)

    def dense_state(self) -> dict[str, torch.Tensor]:
        """A copy of the dense model's weights."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def keep_evicted_ids(self, enabled: bool) -> None:
        """Whether evicted ids are kept for the next delta (default on).

        Only parameter sync consumes evicted ids; a trainer without replicas
        turns this off, or they would grow with every eviction, in memory and
        in every checkpoint. Turning it off drops those held.
        """
        with self.lock:
            for table in self.tables.values():
                table.keep_evicted_ids(enabled)

    def clear_history(self) -> None:
        """Forget every history count (the embeddings stay).

        For several passes over the same log (offline training): counts kept
        from an earlier pass hold every example's own label, which the model
        would learn to trust. The rows go as evictions would (evicted ids for
        the replicas), without being counted as evicted.
        """
        with self.lock:
            for name in self.history.table_names():
                self.tables[name].clear()

    def table_stores(self) -> list[list[str]]:
        """The tables by the store holding them (unsharded tables of equal configs are fused)."""
        return [names for _, names in stores_of(self.tables)]

    def table_rows(self) -> dict[str, int]:
        return {name: len(t) for name, t in self.tables.items()}

    def rows_summary(self) -> str:
        """Rows held, for a progress line: each embedding table, then the history
        and wide tables as one sum each (there may be hundreds of wide terms)."""
        rows = self.table_rows()
        wide = set(self.wide.tables)
        history = set(self.history.table_names())
        parts = [f"{k}={v:,}" for k, v in rows.items() if k not in wide | history]
        if history:
            parts.append(f"history={sum(rows[k] for k in history):,}")
        if wide:
            parts.append(f"wide={sum(rows[k] for k in wide):,} ({len(wide)} terms)")
        return " ".join(parts)


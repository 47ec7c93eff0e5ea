"""The online trainer: model state and the test-then-train step.

Every batch is scored with the current parameters before it is learned from,
so the recorded predictions are honest out-of-sample predictions (progressive
validation, Blum et al. 1999; the "test-then-train" protocol of river and MOA).
Examples joined from impressions were scored when the impression arrived
(what serving showed then): their progressive metrics take that score, given
through :meth:`OnlineTrainer.record_served` once the label is known.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from streamrec.ingest.batch import Batch
from streamrec.config import AppConfig
from streamrec.errors import CheckpointError, ConfigError
from streamrec.trainer.checkpoint import describe
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.history import HistoryFeatures, history_table_name
from streamrec.model.ctr import CTRModel, model_spec
from streamrec.trainer.progressive import ProgressiveMetrics, ServedByVersion
from streamrec.model.delta import ParameterDelta
from streamrec.model.records import DenseParameters
from streamrec.model.tables.base import EmbeddingTable, make_tables
from streamrec.model.tables.distributed import DistributedEmbeddingTable
from streamrec.model.tables.sharded import saved_shards, shard_mismatch
from streamrec.model.tables.store import stores_of

__all__ = ["OnlineTrainer", "StepResult"]

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


class OnlineTrainer:
    """Owns the tables, the dense model and its optimizer; implements ParameterSource.

    ``train_batch`` and the sync methods may run on different threads; a lock
    makes each of them atomic with respect to the others.

    With ``distributed=True`` (torch.distributed initialised, e.g. by
    torchrun) every rank trains on its own slice of each global batch (of
    any size, empty included): embedding tables are sharded across ranks
    (:class:`DistributedEmbeddingTable`), dense gradients are all-reduced,
    and a step equals a single-rank step on the whole batch (the event-time
    clock included: the median of the whole batch's timestamps). Every rank
    must call ``train_batch`` the same number of times.
    """

    def __init__(self, config: AppConfig, distributed: bool = False,
                 process_group: dist.ProcessGroup | None = None) -> None:
        self.config = config
        self.distributed = distributed
        self.group = process_group
        torch.manual_seed(config.trainer.seed)
        self.model = CTRModel(config.model)
        self.features = list(config.model.sparse_features)
        feature_tables = config.feature_tables()  # feature -> the table it looks up
        table_names = list(dict.fromkeys(feature_tables.values()))
        row_dim = self.model.row_dim
        seed = config.trainer.seed
        if distributed:
            if config.model.history_features:
                raise ConfigError("model.history_features: not supported with distributed "
                                  "tables yet (history counts are written outside autograd)")
            if config.model.in_batch_terms:
                raise ConfigError("model.in_batch_terms: not supported with distributed tables "
                                  "yet (each rank sees only its slice of the batch); set it to "
                                  "an empty list")
            embedding_tables: dict[str, EmbeddingTable] = {
                t: DistributedEmbeddingTable(t, row_dim, config.table(t), seed=seed,
                                             group=process_group)
                for t in table_names}
        else:
            embedding_tables = make_tables(table_names, row_dim, config.table, seed=seed)
        history_features = {history_table_name(f): f for f in config.model.history_features}
        # A history table shares its feature's config (same admission, same
        # expiry), except that counts start at zero, not at random values:
        # an id's first example must see n = c = 0, as serving does.
        history_tables = make_tables(
            list(history_features), 2,
            lambda name: dataclasses.replace(config.table(history_features[name]), init_std=0.0),
            seed=seed)
        # Every table, embeddings and history counts alike, is synced,
        # expired and checkpointed the same way.
        self.tables: dict[str, EmbeddingTable] = {**embedding_tables, **history_tables}
        self.embeddings = DynamicEmbeddingCollection(
            embedding_tables, {t: config.table(t).prune_alpha for t in table_names},
            features=feature_tables)
        self.history = HistoryFeatures(config.model.history_features, history_tables,
                                       cap=config.model.history_cap,
                                       strength=config.model.history_strength)
        self.optimizer = torch.optim.Adam(
            [*self.model.parameters(), *self.embeddings.parameters()], lr=config.trainer.dense_lr,
            fused=True)
        self.progress = ProgressiveMetrics()
        # What replicas served, as the application reported it (Event.served_score).
        self.replica = ProgressiveMetrics()
        self.replica_versions = ServedByVersion()
        self.lock = threading.RLock()  # the publisher holds it across delta + snapshot
        self.examples = 0
        self.steps = 0
        self.skipped_steps = 0  # batches not learned from: loss not finite
        self.event_time_ms = 0
        self._spec = model_spec(config.model, feature_tables)

    def batch_size_now(self) -> int:
        """The next training batch's size: the warm-up schedule, then ``batch_size``."""
        cfg = self.config.trainer
        if not cfg.warmup_batch_size:
            return cfg.batch_size
        return min(cfg.batch_size, max(cfg.warmup_batch_size, self.examples // 4))

    def train_batch(self, batch: Batch, scored: torch.Tensor | None = None,
                    fake_negative: torch.Tensor | None = None,
                    duplicated_share: float = 1.0) -> StepResult:
        """Score ``batch``, then take one optimizer step on it.

        ``scored``: ``[B]`` bool, examples whose progressive metrics were (or
        will be) recorded from their served-time score (:meth:`record_served`),
        left out of the test-then-train figures. ``fake_negative``: ``[B]``
        bool, examples of the fake-negative method (``Event.fake_negative``),
        importance-weighted so that the expected loss is that of the true
        labels though a share ``f`` (``duplicated_share``) of the clicked
        impressions is learned twice, first as a negative: a positive
        ``1 + p f``, a negative ``(1 - p)(1 + p f) / (1 - p + p f)``, ``p``
        the model's current probability (no gradient through the weight).
        ``f = 1`` is FNW (Ktena et al. 2019); ``f < 1``, ES-DFM's weights
        (Yang et al. 2021) with one ``f`` for every example.

        An empty batch changes nothing (no optimizer step, no step counted),
        except under ``distributed``, where every rank joins every step's
        collectives whether its slice of the batch holds examples or not.
        """
        if not len(batch) and not self.distributed:
            return StepResult(torch.empty(0), float("nan"), 0)
        with self.lock:
            return self._step(batch, scored, fake_negative, duplicated_share)

    def record_served(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Progressive metrics of ``[B]`` served-time probabilities, now that ``[B]`` labels are known."""
        with self.lock:
            self.progress.update(probs, labels)

    def record_replica(self, scores: torch.Tensor, labels: torch.Tensor,
                       versions: list[int | None]) -> None:
        """Quality of what replicas served (``Event.served_score``), overall and per version."""
        with self.lock:
            self.replica.update(scores, labels)
            self.replica_versions.update(scores, labels, versions)

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
                    ) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def _all_gather(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every rank, concatenated (slices may differ in length)."""
        if not self.distributed:
            return values
        world = dist.get_world_size(self.group)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([values.numel()]), group=self.group)
        longest = max(int(n) for n in sizes)
        padded = torch.zeros(longest, dtype=values.dtype)
        padded[: values.numel()] = values
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[: int(n)] for part, n in zip(parts, sizes)])

    def _step(self, batch: Batch, scored: torch.Tensor | None = None,
              fake_negative: torch.Tensor | None = None,
              duplicated_share: float = 1.0) -> StepResult:
        # The trainer's clock (TTL expiry) is the running maximum of batch
        # medians: one event stamped hours ahead (a skewed producer clock)
        # cannot move it, and with it expire every row at once.
        stamps = self._all_gather(batch.timestamps_ms)
        if stamps.numel():
            self.event_time_ms = max(self.event_time_ms, int(stamps.median()))
        self.model.train()
        if self.steps == 0:
            self._init_bias(batch)
        pooled = self.embeddings.forward(batch.sparse, self.event_time_ms, train=True)
        history = self.history.counts(batch.sparse, batch.labels, self.event_time_ms)
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
        world = self._world_size()
        total = float(self._all_reduce(torch.tensor([float(len(batch))])))
        objective = loss_sum * (world / max(total, 1.0))
        loss = loss_sum.detach() / max(len(batch), 1)  # reported: this rank's mean
        if self._non_finite(objective):
            return self._skip(batch, loss)
        self.optimizer.zero_grad(set_to_none=True)
        (objective + self.embeddings.regularizer()).backward()
        if self.distributed:
            for p in [*self.model.parameters(), *self.embeddings.parameters()]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self._all_reduce(p.grad).div_(world)
        self.optimizer.step()
        self.embeddings.step()
        self.history.commit()
        with torch.no_grad():
            # Exponential moving average of the click rate, ~10k examples long.
            # (Weighted like the loss: the prior is the true stream's rate.)
            seen = self._all_reduce(torch.stack([weight.sum(), (weight * batch.labels).sum()]))
            keep = 0.9999 ** float(seen[0])
            prior = self.model.prior_ctr
            prior.mul_(keep).add_((1 - keep) * seen[1] / seen[0].clamp(min=1))
        self.embeddings.expire(self.event_time_ms)
        self.history.expire(self.event_time_ms)
        probs = torch.sigmoid(logits.detach())
        if scored is None:
            self.progress.update(probs, batch.labels, sampled)  # the true stream's figures
        elif not bool(scored.all()):
            fresh = ~scored
            self.progress.update(probs[fresh], batch.labels[fresh], sampled[fresh])
        self.examples += len(batch)
        self.steps += 1
        return StepResult(probs, float(loss), len(batch))

    def _non_finite(self, objective: torch.Tensor) -> bool:
        """Whether any rank's objective is NaN or infinite (all ranks then skip together)."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(objective)) else 1.0])
        return bool(self._all_reduce(bad, dist.ReduceOp.MAX) > 0)

    def _skip(self, batch: Batch, loss: torch.Tensor) -> StepResult:
        """Learn nothing from a batch whose loss is not finite, and say so.

        One NaN step would put NaN into every dense weight through Adam's
        state, for good, and serving would get them at the next sync. The ids
        were looked up (admissions and last-seen times stand), but no weight,
        optimizer state, history count or metric moves.
        """
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
        sums = self._all_reduce(torch.stack([batch.labels.sum(), weight.sum()]))
        if float(sums[1]) <= 0:
            return
        rate = (sums[0] / sums[1]).clamp(0.01, 0.99)
        self.model.bias.fill_(float(torch.logit(rate)))
        self.model.prior_ctr.fill_(float(rate))

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """Click probabilities for ``batch`` without learning or admitting ids."""
        with self.lock:
            self.model.eval()
            pooled = self.embeddings.forward(batch.sparse, self.event_time_ms, train=False)
            history = self.history.counts(batch.sparse, None, self.event_time_ms)
            return torch.sigmoid(self.model(pooled, batch.dense, history))

    # ParameterSource (trainer.sync.publisher) -------------------------------

    def _dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _sync_dense(self) -> DenseParameters:
        # Serving applies the same OptEmbed mask, so it needs the thresholds.
        return DenseParameters(self._dense_state(), self.embeddings.threshold_state())

    def collect_delta(self, version: int) -> ParameterDelta:
        """Rows touched and ids evicted since the previous call, plus dense weights."""
        with self.lock:
            tables = [table.collect_delta() for table in self.tables.values()]
            return ParameterDelta(
                version=version, base_version=version - 1, full=False, tables=tables,
                dense=self._sync_dense(), event_time_ms=self.event_time_ms,
                exported_at_ms=int(time.time() * 1000), model_spec=self._spec)

    def snapshot(self, version: int) -> ParameterDelta:
        """Every live row and the dense weights, as version ``version``."""
        with self.lock:
            tables = [table.export_all() for table in self.tables.values()]
            return ParameterDelta(
                version=version, base_version=0, full=True, tables=tables,
                dense=self._sync_dense(), event_time_ms=self.event_time_ms,
                exported_at_ms=int(time.time() * 1000), model_spec=self._spec)

    # Checkpointing -----------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        with self.lock:
            return {
                "model": self._dense_state(),
                "prune_thresholds": self.embeddings.thresholds.detach().clone(),
                "optimizer": self.optimizer.state_dict(),
                "tables": {name: t.state_dict() for name, t in self.tables.items()},
                "counters": {"examples": self.examples, "steps": self.steps,
                             "event_time_ms": self.event_time_ms,
                             "world_size": self._world_size()},
                "progress": self.progress.state_dict(),
                "replica": self.replica.state_dict(),
                "replica_versions": self.replica_versions.state_dict(),
                "model_spec": self._spec,
            }

    def _world_size(self) -> int:
        return dist.get_world_size(self.group) if self.distributed else 1

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a :meth:`state_dict`.

        Raises :class:`CheckpointError` naming what differs when ``state`` was
        written under another model config, number of ranks, pruning or shard
        layout (checked before anything is loaded) or frequency filter (found
        while loading the table; the trainer is then to be discarded).
        """
        with self.lock:
            if state["model_spec"] != self._spec:
                raise CheckpointError("written for another model config: " + _spec_changes(
                    str(state["model_spec"]), self._spec))
            counters = state["counters"]
            assert isinstance(counters, dict)
            saved_world = int(counters.get("world_size", self._world_size()))
            if saved_world != self._world_size():
                raise CheckpointError(f"written by {saved_world} trainer rank(s), loaded by "
                                      f"{self._world_size()}: each rank holds only its shard "
                                      f"of the rows")
            thresholds = state["prune_thresholds"]
            assert isinstance(thresholds, torch.Tensor)
            if thresholds.shape != self.embeddings.thresholds.shape:
                raise CheckpointError(
                    f"OptEmbed pruning is on for {thresholds.numel()} feature(s) in the "
                    f"checkpoint, {self.embeddings.thresholds.numel()} now (prune_alpha turned "
                    f"on or off for a table)")
            tables = state["tables"]
            assert isinstance(tables, dict)
            for name, table in self.tables.items():
                configured = table.shard_count
                saved = saved_shards(tables[name]) if name in tables else configured
                if saved != configured:
                    raise CheckpointError(shard_mismatch(name, saved, configured))
            for name, table in self.tables.items():
                try:
                    table.load_state_dict(tables[name])
                except (KeyError, ValueError, RuntimeError) as e:
                    reason = describe(e)
                    raise CheckpointError(reason if reason.startswith(f"table {name}:")
                                          else f"table {name}: {reason}") from e
            self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
            with torch.no_grad():
                self.embeddings.thresholds.copy_(thresholds)
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
            self.examples = int(counters["examples"])
            self.steps = int(counters["steps"])
            self.event_time_ms = int(counters["event_time_ms"])
            if "progress" in state:  # (checkpoints before it was kept)
                self.progress.load_state_dict(state["progress"])  # type: ignore[arg-type]
            if "replica" in state:
                self.replica.load_state_dict(state["replica"])  # type: ignore[arg-type]
                self.replica_versions.load_state_dict(
                    state["replica_versions"])  # type: ignore[arg-type]

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


def _spec_changes(saved: str, current: str) -> str:
    """The model fields that differ between two :func:`model_spec` strings, one clause each."""
    try:
        old, new = json.loads(saved)["model"], json.loads(current)["model"]
    except (ValueError, KeyError, TypeError):
        return "its model description is unreadable"
    changed = [f"model.{key} = {old.get(key)!r} in the checkpoint, {new.get(key)!r} now"
               for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(changed) or "the architecture differs"

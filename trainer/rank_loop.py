"""The training loop of one trainer rank: every rank steps, checkpoints and publishes together.

Each iteration polls this rank's partitions, then one small all-reduce tells
every rank whether the ranks hold a global batch between them, or one holds an
overdue example (then all step, each on its pending examples' share of the
batch, empty included), whether one is told to stop, and whether it is time to
checkpoint, report or publish (rank 0's clocks decide those). A training step is a collective
(sharded tables, reduced gradients), and so are the scoring of a prediction
and the gathering of a delta, so nothing collective runs anywhere else:
impressions are not scored on arrival (their progressive figures are the
step's test-then-train ones), and rank 0 publishes what was gathered
(trainer.rank_sync).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from streamrec.ingest.event import Event
from streamrec.trainer.loop import LoopStats, TrainingLoop
from streamrec.trainer.parameters import TrainerParameters
from streamrec.trainer.rank_sync import GatheredParameters, gather_delta
from streamrec.trainer.ranks import global_progress

if TYPE_CHECKING:
    from streamrec.trainer.sync.publisher import ParameterSource, Publisher

__all__ = ["RankLoop"]

log = logging.getLogger(__name__)

# What every iteration sums over the ranks: examples learned and pending, ranks
# whose oldest pending example is overdue, and ranks asking to stop, checkpoint,
# report, publish. Every rank decides from these sums alone, so all decide alike.
_LEARNED, _PENDING, _URGENT, _STOP, _CHECKPOINT, _REPORT, _PUBLISH = range(7)


class RankLoop(TrainingLoop):
    """:class:`TrainingLoop` for one rank of a distributed :class:`OnlineTrainer`.

    Build it like a :class:`TrainingLoop` (trainer.pipeline does, for
    ``distributed=True``); to publish, every rank calls :meth:`publish_with`
    after :meth:`resume`, rank 0 with a publisher factory, to push the
    versions of every rank's rows.
    """

    gathered: GatheredParameters | None = None
    _publishing = False

    def _arrive(self, events: list[Event], released: list[Event], marks: list[int]
                ) -> list[Event]:
        # A prediction is collective (see the module docstring), and ranks keep
        # no history counts (OnlineTrainer.observes_outcomes): nothing to score.
        return released

    def _drain(self, final: bool) -> None:
        # Only the arrival times here (called at points that differ between
        # ranks); the steps are taken together in _step_together.
        now = time.perf_counter()
        if len(self._pending) > self._timed:
            self._arrivals.append([len(self._pending) - self._timed, now])
            self._timed = len(self._pending)

    def _batch_size(self, agreed: list[int]) -> int:
        """The next global batch's size: ``trainer.batch_size`` after the warm-up
        schedule over every rank's examples (as ``OnlineTrainer.batch_size_now``)."""
        cfg = self.config.trainer
        if not cfg.warmup_batch_size:
            return cfg.batch_size
        return min(cfg.batch_size, max(cfg.warmup_batch_size, agreed[_LEARNED] // 4))

    def _urgent(self, final: bool) -> bool:
        """Whether this rank's pending examples must be trained now (``final``, or overdue)."""
        if not self._pending:
            return False
        delay = self.config.trainer.max_batch_delay_s
        return final or time.perf_counter() - self._arrivals[0][1] >= delay

    def _agree(self, counts: list[int]) -> list[int]:
        """Collective: ``counts`` (this rank's examples pending, urgency, requests...)
        summed over the ranks, after this rank's examples learned."""
        summed = torch.tensor([self.trainer.examples, *counts], dtype=torch.int64)
        dist.all_reduce(summed, group=self.trainer.collective.group)
        return [int(c) for c in summed.tolist()]

    def _due(self, agreed: list[int]) -> bool:
        """Whether every rank steps now: a global batch is pending, or some rank is urgent."""
        total = agreed[_PENDING]
        return total >= self._batch_size(agreed) or (total > 0 and agreed[_URGENT] > 0)

    def _step(self, agreed: list[int]) -> None:
        """One step of every rank (``agreed``: the sums of :meth:`_agree`).

        Each rank takes its pending examples' share of the global batch, so
        that a rank receiving faster trains more of each batch and none falls
        behind (at least one each, up to all it holds).
        """
        size, total = self._batch_size(agreed), agreed[_PENDING]
        take = len(self._pending) if total <= size else \
            min(len(self._pending), -(-len(self._pending) * size // total))
        chunk, self._pending = self._pending[:take], self._pending[take:]
        self._forget(len(chunk))
        self._train(chunk)

    def _step_together(self, final: bool) -> None:
        """Step while a global batch is pending (``final``: while anything is)."""
        self._drain(final)
        while self._due(agreed := self._agree([len(self._pending), self._urgent(final)])):
            self._step(agreed)

    def checkpoint(self) -> bool:
        """Collective: train what every rank holds, then checkpoint this rank (same step)."""
        self._step_together(final=True)
        return super().checkpoint()

    # Parameter sync -------------------------------------------------------------

    def publish_with(self, make_publisher: Callable[[ParameterSource], Publisher] | None
                     ) -> None:
        """Collective (after :meth:`resume`): gather every shard's rows, and publish from now on.

        Rank 0 passes ``make_publisher`` (a :class:`Publisher` over the gathered
        parameters), the other ranks None: they take part in the gathers only.
        """
        self._publishing = True
        self._parameters = TrainerParameters(self.trainer)
        group = self.trainer.collective.group
        snapshot = gather_delta(self._parameters.snapshot(0), group)
        self._parameters.collect_delta(0)  # the next delta starts from the rows just gathered
        if make_publisher is not None:
            self.gathered = GatheredParameters(snapshot)
            self.publisher = make_publisher(self.gathered)

    def _gather(self) -> None:
        delta = gather_delta(self._parameters.collect_delta(0), self.trainer.collective.group)
        if self.gathered is not None:
            self.gathered.add(delta)
            if self.publisher is not None:
                self.publisher.notify()

    def _train(self, events: list[Event]) -> None:
        super()._train(events)
        self._learned = True

    # The loop -------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, max_events: int | None = None,
            max_seconds: float | None = None) -> LoopStats:
        """Train until any rank is stopped (``stop``, ``max_events``, ``max_seconds``)."""
        stop = stop or threading.Event()
        cfg = self.config
        leader = dist.get_rank(self.trainer.collective.group) == 0
        publishing = self._publishing
        self._learned = False
        self._started = time.perf_counter()
        next_log = self._started + cfg.trainer.log_interval_s
        next_ckpt = self._started + cfg.trainer.checkpoint_interval_s
        next_publish = self._started + cfg.sync.min_interval_s
        poll_timeout = cfg.ingest.poll_timeout_ms / 1000
        if self.publisher is not None:
            self.publisher.start()
        try:
            while True:
                want = cfg.ingest.max_poll_records
                stopping = stop.is_set()
                if max_events is not None:
                    want = min(want, max_events - self.stats.events - self.stats.dead_letters)
                    stopping = stopping or want <= 0
                if not stopping:
                    stopping = self._take(want, poll_timeout)
                now = time.perf_counter()
                if max_seconds is not None and now - self._started >= max_seconds:
                    stopping = True
                self._drain(final=False)
                flags = self._agree([
                    len(self._pending), self._urgent(final=False), stopping,
                    leader and now >= next_ckpt, leader and now >= next_log,
                    leader and publishing and self._learned and now >= next_publish])
                if self._due(flags):
                    self._step(flags)
                    self._step_together(final=False)
                if flags[_PUBLISH]:
                    self._gather()
                    self._learned = False
                    next_publish = time.perf_counter() + cfg.sync.min_interval_s
                if flags[_REPORT]:
                    self._report()
                    next_log = time.perf_counter() + cfg.trainer.log_interval_s
                if flags[_CHECKPOINT]:
                    self.checkpoint()
                    next_ckpt = time.perf_counter() + cfg.trainer.checkpoint_interval_s
                if flags[_STOP]:
                    break
            self._step_together(final=True)
            if publishing:
                self._gather()
        finally:
            if self.publisher is not None:
                self.publisher.stop()  # publishes the final state (a version if it changed)
        return self._finish()

    def _report(self) -> None:
        """Collective: the figures over every rank's examples (reported by every rank)."""
        self.stats.wall_seconds = time.perf_counter() - self._started
        self.stats.progress = global_progress(self.quality.progress,
                                              self.trainer.collective.group)
        if self.on_progress is not None:
            self.on_progress(self.stats)

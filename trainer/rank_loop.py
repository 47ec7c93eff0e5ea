"""The training loop of one trainer rank: every rank steps, checkpoints and publishes together.

Each iteration polls this rank's partitions, then one small all-gather tells
every rank what every rank holds: whether the ranks hold a global batch
between them, or one holds an overdue example (then all step, each on its
pending examples' share of the batch, empty included, as many steps as are
due, each rank knowing every share), whether one is told to stop, and whether
it is time to checkpoint, report or publish (rank 0's clocks decide those). A training step is a collective
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

# What every iteration gathers from every rank: its examples learned and
# pending, how many of those pending are overdue (the oldest ones), and whether
# it asks to stop, checkpoint, report, publish. Every rank decides from these
# alone, so all decide alike.
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
        # A prediction is collective (see the module docstring), and ranks move
        # history counts at the steps only (OnlineTrainer.observes_outcomes):
        # nothing to score or observe.
        return released

    def _drain(self, final: bool) -> None:
        # Only the arrival times here (called at points that differ between
        # ranks); the steps are taken together in _step_together.
        now = time.perf_counter()
        if len(self._pending) > self._timed:
            self._arrivals.append([len(self._pending) - self._timed, now])
            self._timed = len(self._pending)

    def _batch_size(self, agreed: torch.Tensor) -> int:
        """The next global batch's size: ``trainer.batch_size`` after the warm-up
        schedule over every rank's examples (as ``OnlineTrainer.batch_size_now``)."""
        cfg = self.config.trainer
        if not cfg.warmup_batch_size:
            return cfg.batch_size
        learned = int(agreed[:, _LEARNED].sum())
        return min(cfg.batch_size, max(cfg.warmup_batch_size, learned // 4))

    def _urgent(self, final: bool) -> int:
        """How many of this rank's pending examples must be trained now: all when
        ``final``, else those overdue (the oldest, as they arrived in order)."""
        if not self._pending or final:
            return len(self._pending)
        due_at = time.perf_counter() - self.config.trainer.max_batch_delay_s
        overdue = 0
        for count, arrived in self._arrivals:
            if arrived > due_at:
                break
            overdue += count
        return min(overdue, len(self._pending))

    def _agree(self, counts: list[int]) -> torch.Tensor:
        """Collective: ``[world, 7]``, every rank's examples learned, then its ``counts``
        (examples pending, how many overdue, requests...)."""
        mine = torch.tensor([self.trainer.examples, *counts], dtype=torch.int64)
        group = self.trainer.collective.group
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        return torch.stack(every)

    def _due(self, agreed: torch.Tensor) -> bool:
        """Whether every rank steps now: a global batch is pending, or some rank is urgent."""
        total = int(agreed[:, _PENDING].sum())
        return total >= self._batch_size(agreed) or (total > 0 and bool(
            (agreed[:, _URGENT] > 0).any()))

    def _shares(self, agreed: torch.Tensor) -> list[int]:
        """Every rank's share of the next step: its pending examples' share of the
        global batch (at least one each, up to all it holds), so that a rank
        receiving faster trains more of each batch and none falls behind."""
        size = self._batch_size(agreed)
        pending = agreed[:, _PENDING].tolist()
        total = sum(pending)
        return [n if total <= size else min(n, -(-n * size // total)) for n in pending]

    def _step_while_due(self, agreed: torch.Tensor) -> None:
        """Every rank's steps while due, from ``agreed`` (what :meth:`_agree` gathered):
        each rank knows every share, so the steps need no agreeing in between."""
        rank = dist.get_rank(self.trainer.collective.group)
        agreed = agreed.clone()
        while self._due(agreed):
            shares = self._shares(agreed)
            take = shares[rank]
            chunk, self._pending = self._pending[:take], self._pending[take:]
            self._forget(len(chunk))
            with self.trainer.collective.slices(shares):
                self._train(chunk)
            taken = torch.tensor(shares, dtype=torch.int64)
            agreed[:, _LEARNED] += taken
            agreed[:, _PENDING] -= taken
            agreed[:, _URGENT] = (agreed[:, _URGENT] - taken).clamp(min=0)

    def _step_together(self, final: bool) -> None:
        """Step while a global batch is pending (``final``: while anything is)."""
        self._drain(final)
        self._step_while_due(self._agree([len(self._pending), self._urgent(final)]))

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
                agreed = self._agree([
                    len(self._pending), self._urgent(final=False), stopping,
                    leader and now >= next_ckpt, leader and now >= next_log,
                    leader and publishing and self._learned and now >= next_publish])
                self._step_while_due(agreed)
                flags = agreed.sum(dim=0).tolist()
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

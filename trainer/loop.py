"""The training loop: source -> joiner -> batches -> trainer, with checkpoints.

One thread polls the source, routes malformed records to the dead-letter
sink, labels impressions through the joiner, trains on full mini-batches and
records their quality (trainer.quality). With a joiner, impressions are
scored on arrival by the current model (what a replica would serve then),
and that score is what the progressive metrics take once the joiner reports
the impression's label; outcomes reach the history counts as the joiner
releases them (docs/design.md, "History features").
Parameter sync runs on the publisher's own thread. Offsets are committed to
the source only after a checkpoint that covers them (see trainer.checkpoint).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from streamrec.ingest.batch import Batch, Batcher
from streamrec.ingest.event import EXAMPLE, IMPRESSION, Event
from streamrec.ingest.event_schema import EventSchema
from streamrec.config import AppConfig
from streamrec.errors import CheckpointError
from streamrec.trainer.checkpoint import Checkpointer, checkpoint_name, describe
from streamrec.trainer.checkpoint_state import TrainingState
from streamrec.trainer.ledger import Ledger
from streamrec.trainer.metrics import TrainerMetrics
from streamrec.trainer.pending import PendingRows
from streamrec.trainer.quality import QualityMetrics
from streamrec.trainer.trainer import OnlineTrainer

if TYPE_CHECKING:
    from streamrec.ingest.deadletter import DeadLetterSink
    from streamrec.ingest.joiner import Joiner
    from streamrec.ingest.source import EventSource, SourceBatch
    from streamrec.trainer.sync.publisher import Publisher

__all__ = ["TrainingLoop", "LoopStats", "RecentRate"]

log = logging.getLogger(__name__)

# Fewest events scored at once on arrival (a prediction call costs ~1 ms).
MIN_SCORING_SLICE = 256


@dataclass
class LoopStats:
    """What a run of the loop did; ``progress`` is the progressive metrics' snapshot."""

    events: int = 0
    dead_letters: int = 0
    examples: int = 0
    positives: int = 0
    wall_seconds: float = 0.0
    progress: dict[str, float] = field(default_factory=dict)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.wall_seconds if self.wall_seconds > 0 else 0.0


class RecentRate:
    """Examples per second since the previous progress report, not since the start.

    A report less than ``min_window_s`` after the previous one (the final
    report, as the loop ends) is measured from the report before, so it
    never divides a handful of examples by a few milliseconds.
    """

    def __init__(self, min_window_s: float = 0.5) -> None:
        self.min_window_s = min_window_s
        self._last = (0.0, 0)  # (wall_seconds, examples) at the previous report
        self._before = (0.0, 0)

    def update(self, stats: LoopStats) -> float:
        """The rate up to ``stats``, which becomes the next window's start."""
        if stats.wall_seconds - self._last[0] >= self.min_window_s:
            self._before = self._last
        t, n = self._before
        self._last = (stats.wall_seconds, stats.examples)
        window = stats.wall_seconds - t
        return (stats.examples - n) / window if window > 0 else 0.0


class TrainingLoop:
    """Drives one trainer from one source until stopped or the source is exhausted.

    ``config`` gives the batcher's features, the event schema, the poll and
    batch timing; ``quality`` (default: a new one) is where the loop records
    progressive and served metrics.
    """

    def __init__(
        self,
        trainer: OnlineTrainer,
        source: EventSource,
        config: AppConfig,
        *,
        quality: QualityMetrics | None = None,
        joiner: Joiner | None = None,
        dead_letters: DeadLetterSink | None = None,
        publisher: Publisher | None = None,
        checkpointer: Checkpointer | None = None,
        metrics: TrainerMetrics | None = None,
        on_progress: Callable[[LoopStats], None] | None = None,
    ) -> None:
        self.trainer = trainer
        self.config = config
        self.quality = quality if quality is not None else QualityMetrics()
        self.state = TrainingState(trainer, self.quality, joiner)
        self.source = source
        self.joiner = joiner
        self.dead_letters = dead_letters
        self.publisher = publisher
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.on_progress = on_progress
        model = self.config.model
        self.batcher = Batcher(model.sparse_features, model.dense_features)
        # Events of an unknown type or with wrongly typed features: dead letters.
        self.schema = EventSchema.from_config(self.config,
                                              joiner.metrics if joiner is not None else None)
        self.stats = LoopStats()
        self._pending: list[Event] = []
        # With a joiner: the pending examples' rows, batched once on arrival,
        # and (with history features or wide terms) the counts and wide logit
        # each learns with (OnlineTrainer.observe), in order.
        self._rows = PendingRows()
        # When the pending examples arrived: [count, time] per drain that
        # found new ones, oldest first; ``_timed`` of them are accounted for.
        self._arrivals: collections.deque[list[float]] = collections.deque()
        self._timed = 0
        self._offsets: dict[tuple[str, int], int] = {}
        # The learned-offsets ledger (trainer.ledger): the log each topic's offsets
        # belong to, the lineage's line count, and the spans of records taken in
        # since the last checkpoint: [first, next, records, examples] per partition.
        self.ledger = Ledger(checkpointer.directory) if checkpointer is not None else None
        self._logs: dict[str, str] = {}
        self._seq = 0
        self._spans: dict[tuple[str, int], list[list[int]]] = {}
        self._started = 0.0

    def resume(self) -> int:
        """Load the newest checkpoint, if any; returns the parameter version to continue from.

        Restores the trainer, the joiner's pending impressions, and seeks the
        source to the offsets the checkpoint covers.
        """
        if self.checkpointer is None:
            return 0
        ckpt = self.checkpointer.latest()
        if ckpt is None:
            return 0
        try:
            self.state.load_state_dict(ckpt.state)
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: {describe(e)}. Restore the config it was written "
                f"with, or set trainer.checkpoint_dir to another directory to start afresh "
                f"(or move this file away to resume from an older one)") from e
        self._offsets = dict(ckpt.offsets)
        self._logs = {str(t): str(i) for t, i in ckpt.ledger.get("logs", {}).items()}
        self._seq = int(ckpt.ledger.get("seq", 0))
        if self.ledger is not None:
            self.ledger.repair(ckpt.ledger.get("line"))
        if self._offsets:
            # The checkpoint's offsets win over the broker's committed ones:
            # a trainer killed between writing a checkpoint and committing
            # would otherwise learn the events in between twice. With the logs
            # they belong to, a source notices a log replaced since.
            self.source.seek(self._offsets, self._logs or None)
        log.info("resumed from %s (step %d, %d examples)", ckpt.path, ckpt.step,
                 self.trainer.examples)
        return ckpt.version

    def _note(self, got: SourceBatch) -> None:
        """Add a poll's records to the ledger's spans since the last checkpoint."""
        if got.logs is not None:
            self._logs.update(got.logs)
        if not got.spans:
            return
        examples: collections.Counter[tuple[str, int]] = collections.Counter()
        if got.origins is not None:
            examples.update(o for e, o in zip(got.events, got.origins) if e.type == EXAMPLE)
        for key, (first, records) in got.spans.items():
            runs = self._spans.setdefault(key, [])
            nxt = got.offsets[key]
            if runs and runs[-1][1] == first:
                runs[-1][1] = nxt
                runs[-1][2] += records
                runs[-1][3] += examples[key]
            else:
                runs.append([first, nxt, records, examples[key]])

    def _ledger_line(self, path_name: str) -> dict[str, object] | None:
        if not self._spans:
            return None
        return {"seq": self._seq + 1, "checkpoint": path_name, "written_at": time.time(),
                "spans": [{"topic": t, "partition": p, "log": self._logs.get(t, ""),
                           "first": run[0], "next": run[1], "records": run[2],
                           "examples": run[3]}
                          for (t, p), runs in sorted(self._spans.items()) for run in runs]}

    def _train(self, events: list[Event]) -> None:
        if self._rows:
            batch, observed, wide = self._rows.take(len(events))
        else:
            batch, observed, wide = self.batcher.build(events), None, None
        t0 = time.perf_counter()
        scored = fake = None
        if self.joiner is not None:
            # (dtype given: a rank's share of a step may be empty)
            scored = torch.tensor([e.predicted is not None for e in events], dtype=torch.bool)
            fake = torch.tensor([e.fake_negative for e in events], dtype=torch.bool)
        share = self.joiner.duplicated_share if self.joiner is not None else 1.0
        result = self.trainer.train_batch(batch, fake, share, observed, wide)
        if result.skipped:
            return  # counted (streamrec_trainer_skipped_steps_total) and logged; not learned
        self.quality.record_step(result.probs, batch, scored)
        if self.publisher is not None:
            self.publisher.notify()
        positives = int(batch.labels.sum())
        self.stats.examples += len(events)
        self.stats.positives += positives
        if self.metrics is not None:
            self.metrics.step_seconds.observe(time.perf_counter() - t0)
            self.metrics.steps.inc()
            self.metrics.examples.inc(len(events))
            self.metrics.positives.inc(positives)

    def _arrive(self, events: list[Event], released: list[Event], marks: list[int]
                ) -> list[Event]:
        """Score the impressions among ``events`` (just pushed to the joiner) as a
        replica holding the newest parameters would have when each arrived, and
        store the outcomes the joiner ``released`` meanwhile; returns ``released``
        with the served-time scores of the impressions they came from.

        ``marks[k]``: the examples released once ``events[k]`` was taken in. With
        history features, each outcome reaches the history counts now, in the
        order things happened, so an impression is scored with every label
        known before it, not only those of the steps already taken; one
        batched pass either way (a prediction call costs ~1 ms).
        """
        impressions = [e for e in events if e.type == IMPRESSION]
        observed = None  # each released example's counts and wide logit, when observed
        if self.trainer.observes_outcomes and (impressions or released):
            scored, rows, observed = self._observe(events, impressions, released, marks)
        else:
            if impressions:
                probs = self.trainer.predict(self.batcher.build(impressions)).tolist()
                scored = [e._replace(predicted=p) for e, p in zip(impressions, probs)]
            rows = self.batcher.build(released)
        if impressions:
            released = self.joiner.annotate(scored, released)  # type: ignore[union-attr]
        if observed is not None:
            # An example trains on the counts its impression was scored with
            # (what serving saw), else (a labeled example) on those before it.
            counts, _ = observed
            served = [i for i, e in enumerate(released) if e.served_history is not None]
            if served:
                counts[served] = torch.stack([released[i].served_history for i in served])
        self._rows.add(rows, observed)
        return released

    def _observe(self, events: list[Event], impressions: list[Event], released: list[Event],
                 marks: list[int]
                 ) -> tuple[list[Event], Batch, tuple[torch.Tensor, torch.Tensor]]:
        """Store the ``released`` outcomes in the history counts and wide terms, in
        the order things happened, and score the ``impressions`` with every
        outcome before them.

        Returns the impressions with their scores and the counts they were
        scored with (``served_history``), the released examples' rows, and
        their ``[len(released), H, 2]`` counts and ``[len(released)]`` wide
        logits before each.
        """
        order: list[Event] = []
        asks: list[int] = []  # positions of the impressions in ``order``
        start = 0
        for event, mark in zip(events, marks):
            if event.type == IMPRESSION:
                asks.append(len(order))
                order.append(event)
            order.extend(released[start:mark])
            start = mark
        order.extend(released[start:])
        learned = torch.ones(len(order), dtype=torch.bool)
        learned[asks] = False
        kept = torch.nonzero(learned).reshape(-1)  # the released examples' rows, in order
        batch = self.batcher.build(order)
        outcomes = torch.zeros((len(order), 2))
        if released:
            # A clicked impression learned as a negative before (fake
            # negative) was counted then: its click adds a positive, not a showing.
            again = torch.tensor([e.relearned for e in released], dtype=torch.float32)
            outcomes[kept, 0] = 1.0 - again
            outcomes[kept, 1] = batch.labels.index_select(0, kept)
        seen = self.trainer.observe(batch, outcomes)
        if self.publisher is not None:
            self.publisher.notify()  # the labels reach replicas with the counts
        probs = seen.probs[asks].tolist() if asks else []
        served = seen.counts[asks].unbind(0) if asks else ()
        scored = [e._replace(predicted=p, served_history=h)
                  for e, p, h in zip(impressions, probs, served)]
        return scored, batch.rows(kept), (seen.counts.index_select(0, kept),
                                          seen.wide.index_select(0, kept))

    def _join(self, events: list[Event], origins: list[tuple[str, int]] | None,
              assigned: list[tuple[str, int]] | None) -> None:
        """Score, join and train ``events`` in slices that end about where a step does.

        An impression is scored by the model of its arrival: one that arrives
        after the examples of a step have arrived is scored after that step.
        """
        start = 0
        while True:
            size = max(MIN_SCORING_SLICE, self.trainer.batch_size_now() - len(self._pending))
            end = min(len(events), start + size)
            part, marks = events[start:end], []
            released = self.joiner.push(  # type: ignore[union-attr]
                part, origins[start:end] if origins is not None else None, assigned, marks)
            self._pending.extend(self._arrive(part, released, marks))
            self._record_outcomes()
            if end >= len(events):
                return
            start = end
            self._drain(final=False)

    def _record_outcomes(self) -> None:
        """Served-time metrics of the impressions whose time is settled (joiner.take_outcomes)."""
        assert self.joiner is not None
        outcomes = self.joiner.take_outcomes()
        scored = [e for e in outcomes if e.predicted is not None]
        if scored:
            self.quality.record_served(
                torch.tensor([e.predicted for e in scored], dtype=torch.float64),
                torch.tensor([e.label for e in scored], dtype=torch.float64))
        served = [e for e in outcomes if e.served_score is not None]
        if served:
            self.quality.record_replica(
                torch.tensor([e.served_score for e in served], dtype=torch.float64),
                torch.tensor([e.label for e in served], dtype=torch.float64),
                [e.model_version for e in served])

    def _drain(self, final: bool) -> None:
        """Train full batches; with ``final``, or once the oldest pending example
        waited ``max_batch_delay_s``, the partial one too."""
        now = time.perf_counter()
        if len(self._pending) > self._timed:
            self._arrivals.append([len(self._pending) - self._timed, now])
            self._timed = len(self._pending)
        delay = self.config.trainer.max_batch_delay_s
        while self._pending:
            size = self.trainer.batch_size_now()
            overdue = now - self._arrivals[0][1] >= delay
            if len(self._pending) < size and not (final or overdue):
                break
            chunk, self._pending = self._pending[:size], self._pending[size:]
            self._forget(len(chunk))
            self._train(chunk)

    def _forget(self, n: int) -> None:
        """Drop the arrival times of the ``n`` oldest pending examples (just trained)."""
        self._timed -= n
        while n:
            first = self._arrivals[0]
            taken = min(n, int(first[0]))
            first[0] -= taken
            n -= taken
            if not first[0]:
                self._arrivals.popleft()

    def checkpoint(self) -> bool:
        """Train what is pending, write a checkpoint, then commit the offsets it covers.

        Returns False when no checkpoint could be written (logged and counted;
        the offsets stay uncommitted).
        """
        if self.checkpointer is None:
            return True
        self._drain(final=True)
        t0 = time.perf_counter()
        if self.dead_letters is not None:
            # The checkpoint's offsets pass the records rejected so far: they
            # must be in the dead-letter sink first, or a crash loses them.
            try:
                self.dead_letters.flush()
            except Exception:
                if self.metrics is not None:
                    self.metrics.checkpoints.labels("error").inc()
                log.exception("dead letters not confirmed written; checkpoint skipped, "
                              "offsets stay uncommitted")
                return False
        version = self.publisher.version if self.publisher is not None else 0
        state = self.state.state_dict()
        line = self._ledger_line(checkpoint_name(self.trainer.steps))
        seq = self._seq + (line is not None)
        ledger = {"logs": dict(self._logs), "seq": seq, "line": line}
        try:
            self.checkpointer.save(self.trainer.steps, state, self._offsets, version, ledger)
        except Exception:
            if self.metrics is not None:
                self.metrics.checkpoints.labels("error").inc()
            log.exception("checkpoint failed; offsets stay uncommitted")
            return False
        self._seq, self._spans = seq, {}
        if self.ledger is not None and line is not None:
            try:
                self.ledger.append(line)
            except OSError:  # (the checkpoint holds it: resume rewrites it if last)
                log.exception("could not append to the learned-offsets ledger %s",
                              self.ledger.path)
        if self.metrics is not None:
            self.metrics.checkpoints.labels("ok").inc()
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        if self._offsets:
            self.source.commit(self._offsets)
        return True

    def _report(self) -> None:
        self.stats.wall_seconds = time.perf_counter() - self._started
        self.stats.progress = self.quality.progress.snapshot()
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _take(self, want: int, poll_timeout: float) -> bool:
        """Poll up to ``want`` records into the pending examples; returns ``source.exhausted``."""
        got = self.schema.screen(self.source.poll(want, poll_timeout))
        self.stats.events += len(got.events)
        if got.dead_letters:
            self.stats.dead_letters += len(got.dead_letters)
            if self.dead_letters is not None:
                self.dead_letters.put(got.dead_letters)
        self._offsets.update(got.offsets)
        self._note(got)
        if got.assigned:  # (empty during a rebalance: not news)
            # A partition gone to another consumer is that one's to
            # commit: our stale offset, committed when it came back,
            # moved the group's offset backwards (and a checkpoint
            # holding it would re-train what the other one learned).
            for key in self._offsets.keys() - set(got.assigned):
                del self._offsets[key]
        if self.joiner is not None:
            self._join(got.events, got.origins, got.assigned)
        else:
            self._pending.extend(got.events)
        exhausted = self.source.exhausted
        if exhausted and self.joiner is not None:
            self._pending.extend(self._arrive([], self.joiner.flush(), []))
            self._record_outcomes()
        return exhausted

    def run(self, stop: threading.Event | None = None, max_events: int | None = None,
            max_seconds: float | None = None) -> LoopStats:
        """Train until ``stop`` is set, the source is exhausted, or a limit is reached."""
        stop = stop or threading.Event()
        cfg = self.config
        self._started = time.perf_counter()
        next_log = self._started + cfg.trainer.log_interval_s
        next_ckpt = self._started + cfg.trainer.checkpoint_interval_s
        poll_timeout = cfg.ingest.poll_timeout_ms / 1000
        if self.publisher is not None:
            self.publisher.start()
        try:
            while not stop.is_set():
                want = cfg.ingest.max_poll_records
                if max_events is not None:
                    want = min(want, max_events - self.stats.events - self.stats.dead_letters)
                    if want <= 0:
                        break
                exhausted = self._take(want, poll_timeout)
                self._drain(final=exhausted)
                now = time.perf_counter()
                if now >= next_log:
                    self._report()
                    next_log = now + cfg.trainer.log_interval_s
                if now >= next_ckpt:
                    self.checkpoint()
                    next_ckpt = time.perf_counter() + cfg.trainer.checkpoint_interval_s
                if exhausted:
                    break
                if max_seconds is not None and now - self._started >= max_seconds:
                    break
            self._drain(final=True)
        finally:
            if self.publisher is not None:
                self.publisher.stop()  # publishes the final state (a version if it changed)
        return self._finish()

    def _finish(self) -> LoopStats:
        """The final checkpoint and report, once the publisher has stopped."""
        # After the last publish, so the checkpoint records the version replicas
        # hold: a restart then continues from it (instead of finding every
        # replica "ahead" of the trainer and resending snapshots to all).
        if not self.checkpoint():
            # What was learned since the last checkpoint is lost with this
            # process: the caller (and the exit status) must know.
            raise CheckpointError("the final checkpoint could not be written (the log "
                                  "says why); the events since the last checkpoint will "
                                  "be trained again after a restart")
        self._report()
        return self.stats

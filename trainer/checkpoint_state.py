"""What a checkpoint holds of a training run, and its restore with checks.

:class:`TrainingState` gathers the trainer's state (dense weights, optimizer,
tables, OptEmbed thresholds, counters), the run's quality figures and the
joiner's pending impressions into one dict, and loads it back, refusing with
a :class:`CheckpointError` that names what differs a state written under
another model config, number of ranks, pruning or shard layout.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from streamrec.config import ModelConfig

from streamrec.errors import CheckpointError
from streamrec.model.tables.sharded import saved_shards, shard_mismatch
from streamrec.trainer.checkpoint import describe
from streamrec.trainer.trainer import OnlineTrainer

if TYPE_CHECKING:
    from streamrec.ingest.joiner import Joiner
    from streamrec.trainer.quality import QualityMetrics

__all__ = ["TrainingState"]


class TrainingState:
    """The checkpointed state of ``trainer``, with ``quality`` and ``joiner`` when given."""

    def __init__(self, trainer: OnlineTrainer, quality: QualityMetrics | None = None,
                 joiner: Joiner | None = None) -> None:
        self.trainer = trainer
        self.quality = quality
        self.joiner = joiner

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        with t.lock:
            state: dict[str, Any] = {
                "model": t.dense_state(),
                "prune_thresholds": t.embeddings.thresholds.detach().clone(),
                "optimizer": t.optimizer.state_dict(),
                "tables": {name: table.state_dict() for name, table in t.tables.items()},
                "counters": {"examples": t.examples, "steps": t.steps,
                             "event_time_ms": t.event_time_ms,
                             "world_size": t.collective.world_size()},
                "model_spec": t.spec,
            }
        if self.quality is not None:
            state.update(self.quality.state_dict())
        if self.joiner is not None:
            # Impressions still waiting for actions sit before the committed
            # offsets; without them a restart would never label them.
            state["joiner"] = self.joiner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises :class:`CheckpointError` naming what differs when ``state`` was
        written under another model config, number of ranks, pruning or shard
        layout (checked before anything is loaded) or frequency filter (found
        while loading the table; the trainer is then to be discarded).
        """
        t = self.trainer
        with t.lock:
            saved_spec = _with_added_fields(str(state["model_spec"]))
            if saved_spec != t.spec:
                raise CheckpointError("written for another model config: " + _spec_changes(
                    saved_spec, t.spec))
            counters = state["counters"]
            world = t.collective.world_size()
            saved_world = int(counters.get("world_size", world))
            if saved_world != world:
                raise CheckpointError(f"written by {saved_world} trainer rank(s), loaded by "
                                      f"{world}: each rank holds only its shard of the rows")
            thresholds = state["prune_thresholds"]
            assert isinstance(thresholds, torch.Tensor)
            if thresholds.shape != t.embeddings.thresholds.shape:
                raise CheckpointError(
                    f"OptEmbed pruning is on for {thresholds.numel()} feature(s) in the "
                    f"checkpoint, {t.embeddings.thresholds.numel()} now (prune_alpha turned "
                    f"on or off for a table)")
            tables = state["tables"]
            for name, table in t.tables.items():
                configured = table.shard_count
                saved = saved_shards(tables[name]) if name in tables else configured
                if saved != configured:
                    raise CheckpointError(shard_mismatch(name, saved, configured))
            for name, table in t.tables.items():
                try:
                    table.load_state_dict(tables[name])
                except (KeyError, ValueError, RuntimeError) as e:
                    reason = describe(e)
                    raise CheckpointError(reason if reason.startswith(f"table {name}:")
                                          else f"table {name}: {reason}") from e
            t.model.load_state_dict(state["model"])
            with torch.no_grad():
                t.embeddings.thresholds.copy_(thresholds)
            t.optimizer.load_state_dict(state["optimizer"])
            t.examples = int(counters["examples"])
            t.steps = int(counters["steps"])
            t.event_time_ms = int(counters["event_time_ms"])
        if self.quality is not None:
            self.quality.load_state_dict(state)
        if self.joiner is not None and "joiner" in state:
            self.joiner.load_state_dict(state["joiner"])


# Model fields added since checkpoints were first written, with the value that
# a checkpoint without them was trained with.
_ADDED_FIELDS: dict[str, object] = {"wide_terms": [],
                                    "wide_lr": ModelConfig.__dataclass_fields__["wide_lr"].default,
                                    "field_scale": 1.0}


def _with_added_fields(spec: str) -> str:
    """``spec`` with the fields an earlier release did not write, as it trained without them."""
    try:
        data = json.loads(spec)
        model = data["model"]
    except (ValueError, KeyError, TypeError):
        return spec
    if not isinstance(model, dict) or _ADDED_FIELDS.keys() <= model.keys():
        return spec
    model.update({k: v for k, v in _ADDED_FIELDS.items() if k not in model})
    return json.dumps(data, sort_keys=True)


def _spec_changes(saved: str, current: str) -> str:
    """The model fields that differ between two :func:`model_spec` strings, one clause each."""
    try:
        old, new = json.loads(saved)["model"], json.loads(current)["model"]
    except (ValueError, KeyError, TypeError):
        return "its model description is unreadable"
    changed = [f"model.{key} = {old.get(key)!r} in the checkpoint, {new.get(key)!r} now"
               for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(changed) or "the architecture differs"

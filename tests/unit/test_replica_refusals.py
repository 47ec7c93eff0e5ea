"""A replica never goes back and never serves poison: what it refuses, and that
a refused push changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.serving.replica import ModelReplica, NonFiniteScoreError
from streamrec.errors import NonFiniteError, StaleVersionError
from streamrec.synthetic import SyntheticStream, default
from streamrec.model.delta import DenseParameters, ParameterDelta, TableDelta, UpsertedRows
from tests.trained import small_trainer
from streamrec.trainer.trainer import OnlineTrainer
from streamrec.trainer.parameters import TrainerParameters


@pytest.fixture(scope="module")
def trainer() -> OnlineTrainer:
    return small_trainer()


PROBE = list(SyntheticStream(default()).events(20))


def scores(replica: ModelReplica) -> list[float]:
    return [replica.predict(e.user_id, [e.item_id], dict(e.features))[0][0] for e in PROBE]


def results(registry: CollectorRegistry, kind: str, result: str) -> float:
    return registry.get_sample_value("streamrec_serving_deltas_applied_total",
                                     {"kind": kind, "result": result}) or 0.0


def test_a_snapshot_or_delta_below_the_version_held_is_refused(trainer) -> None:
    registry = CollectorRegistry()
    replica = ModelReplica(registry)
    replica.apply(TrainerParameters(trainer).snapshot(7))
    before = scores(replica)
    # A full snapshot of version 1 was applied: the replica served version 1.
    for version in (1, 7):
        with pytest.raises(StaleVersionError, match="never goes back"):
            replica.apply(TrainerParameters(trainer).snapshot(version))
    # A delta on the version held that names a lower version.
    with pytest.raises(StaleVersionError):
        replica.apply(ParameterDelta(3, 7, False, [], {}, 0, 0, ""))
    assert replica.version == 7 and scores(replica) == before
    assert results(registry, "full", "stale") == 2 and results(registry, "delta", "stale") == 1
    replica.apply(TrainerParameters(trainer).snapshot(8))  # a new lineage above it is taken
    assert replica.version == 8


def poisoned(trainer: OnlineTrainer, version: int, full: bool, where: str) -> ParameterDelta:
    parameters = TrainerParameters(trainer)
    delta = parameters.snapshot(version) if full else parameters.collect_delta(version)
    table = next(t for t in trainer.tables.values() if t.name == "item_id")
    exported = table.export_all()
    ids, rows = exported.upserted.ids, exported.upserted.values
    rows = rows[:5].clone()
    dense = {k: v.clone() for k, v in delta.dense.weights.items()}
    if where == "rows":
        rows[2, 1] = math.nan
    elif where == "inf_rows":
        rows[0, 0] = math.inf
    else:
        name = next(k for k, v in dense.items() if v.numel() > 1)
        dense[name].view(-1)[0] = math.nan
    tables = [t for t in delta.tables if t.table != "item_id"]
    tables.append(TableDelta("item_id", table.dim, UpsertedRows(ids[:5], rows)))
    return ParameterDelta(version, delta.base_version, full, tables,
                          DenseParameters(dense, delta.dense.prune_thresholds),
                          delta.event_time_ms, delta.exported_at_ms, delta.model_spec)


@pytest.mark.parametrize("where", ["rows", "inf_rows", "dense"])
def test_non_finite_parameters_are_refused_and_nothing_is_applied(trainer, where) -> None:
    registry = CollectorRegistry()
    replica = ModelReplica(registry)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        replica.apply(poisoned(trainer, 1, True, where))
    assert not replica.ready
    replica.apply(TrainerParameters(trainer).snapshot(1))
    before, rows = scores(replica), replica.table_rows()
    with pytest.raises(NonFiniteError):
        replica.apply(poisoned(trainer, 2, False, where))
    assert replica.version == 1 and scores(replica) == before and replica.table_rows() == rows
    assert results(registry, "full", "non_finite") == 1
    assert results(registry, "delta", "non_finite") == 1


def test_a_non_finite_score_is_never_served_and_is_counted(trainer) -> None:
    # Finite parameters that overflow: a row and the last layer's weights
    # near float32's largest value make the logit's terms +inf and -inf.
    registry = CollectorRegistry()
    replica = ModelReplica(registry)
    snapshot = TrainerParameters(trainer).snapshot(1)
    replica.apply(snapshot)
    table = trainer.tables["item_id"]
    exported = table.export_all()
    ids, _ = exported.upserted.ids, exported.upserted.values
    huge = torch.full((1, table.dim), 3e38)
    dense = {k: v.clone() for k, v in snapshot.dense.weights.items()}
    dense["mlp.0.weight"].fill_(3e38)
    replica.apply(ParameterDelta(2, 1, False,
                                 [TableDelta("item_id", table.dim, UpsertedRows(ids[:1], huge))],
                                 DenseParameters(dense), 0, 0, ""))
    user = PROBE[0].user_id
    with pytest.raises(NonFiniteScoreError, match="1 of 2 candidates"):
        replica.predict(user, [int(ids[0]), int(ids[1])])
    with pytest.raises(NonFiniteScoreError):
        replica.score_rows([(user, int(ids[0]), None)])
    assert registry.get_sample_value("streamrec_serving_non_finite_scores_total") == 2
    assert all(math.isfinite(s) for s in replica.predict(user, [int(ids[1])])[0])

"""Trainer ranks' pieces that need no process group: torchrun's environment, which
checkpoint step the ranks resume from, and rank 0's gathered parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamrec.errors import CheckpointError, ConfigError
from streamrec.model.delta import ParameterDelta
from streamrec.model.records import DenseParameters, EvictedIds, TableDelta, UpsertedRows
from streamrec.trainer.rank_sync import GatheredParameters
from streamrec.trainer.ranks import Ranks, common_step, refuse_rank_directories


def test_torchrun_environment_names_this_rank() -> None:
    assert Ranks.from_env({}) is None
    assert Ranks.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # one process
    assert Ranks.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == Ranks(1, 2, 1)
    assert Ranks(1, 2).share == (1, 2)


@pytest.mark.parametrize("env, field", [
    ({"WORLD_SIZE": "2"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE"),
])
def test_a_broken_torchrun_environment_is_refused_naming_the_variable(env, field) -> None:
    with pytest.raises(ConfigError, match=field):
        Ranks.from_env(env)


def test_ranks_resume_from_the_newest_step_all_of_them_hold(tmp_path: Path) -> None:
    assert common_step([set(), set()], tmp_path) is None  # a first start
    # Rank 1 was killed while rank 0 wrote step 30: both resume from 20.
    assert common_step([{10, 20, 30}, {10, 20}], tmp_path) == 20
    with pytest.raises(CheckpointError, match=r"ranks \[1\] have no checkpoint"):
        common_step([{10}, set()], tmp_path)  # a rank added since
    with pytest.raises(CheckpointError, match="share no step"):
        common_step([{10}, {20}], tmp_path)


def test_one_process_refuses_a_directory_of_ranks_checkpoints(tmp_path: Path) -> None:
    refuse_rank_directories(tmp_path / "absent")
    refuse_rank_directories(tmp_path)
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank1").mkdir()
    with pytest.raises(CheckpointError, match="2 trainer ranks"):
        refuse_rank_directories(tmp_path)


def _delta(ids: list[int], value: float, evicted: list[int] = ()) -> ParameterDelta:
    return ParameterDelta(
        version=0, base_version=0, full=False,
        tables=[TableDelta("user_id", 2, UpsertedRows(torch.tensor(ids, dtype=torch.int64),
                                                      torch.full((len(ids), 2), value)),
                           EvictedIds(torch.tensor(list(evicted), dtype=torch.int64)))],
        dense=DenseParameters({"w": torch.tensor([value])}))


def _rows(delta: ParameterDelta) -> dict[int, float]:
    t = delta.tables[0]
    return dict(zip(t.upserted.ids.tolist(), t.upserted.values[:, 0].tolist()))


def test_gathered_parameters_publish_deltas_and_snapshots_of_every_rank() -> None:
    gathered = GatheredParameters(_delta([1, 2, 3], 0.0))  # both ranks' rows at start
    gathered.add(_delta([2, 4], 1.0))  # a publish point: rows of both ranks
    gathered.add(_delta([4], 2.0, evicted=[3]))
    delta = gathered.collect_delta(7)
    assert (delta.version, delta.base_version, delta.full) == (7, 6, False)
    assert _rows(delta) == {2: 1.0, 4: 2.0}
    assert delta.tables[0].evicted.ids.tolist() == [3]
    assert delta.dense.weights["w"].item() == 2.0  # the newest dense weights
    assert _rows(gathered.collect_delta(8)) == {}  # nothing added since
    snapshot = gathered.snapshot(8)
    assert snapshot.full and _rows(snapshot) == {1: 0.0, 2: 1.0, 4: 2.0}
    for _ in range(40):  # deltas folded into the copy of the rows keep it whole
        gathered.add(_delta([5], 3.0))
    assert _rows(gathered.snapshot(9)) == {1: 0.0, 2: 1.0, 4: 2.0, 5: 3.0}


def test_a_rank_refuses_a_file_source_naming_the_field(tmp_path: Path) -> None:
    from streamrec.config import load_config
    from streamrec.trainer.pipeline import open_source

    events = tmp_path / "events.jsonl"
    events.write_text("")
    config = load_config(env={}, overrides={"ingest.source": "file",
                                            "ingest.path": str(events)})
    with pytest.raises(ConfigError, match="ingest.source='file': trainer ranks read kafka"):
        open_source(config, share=(0, 2))

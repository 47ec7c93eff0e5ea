"""The pipeline factory: `train`, `evaluate` and `demo` wire one config the same way."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamrec.config import AppConfig, load_config
from streamrec.ingest.decode import encode_json
from streamrec.ingest.source import MemorySource
from streamrec.synthetic import SyntheticStream, default
from streamrec.trainer import pipeline as factory
from streamrec.trainer.checkpoint import Checkpointer
from streamrec.trainer.pipeline import Pipeline, build_pipeline
from streamrec.trainer.sync.sink import MemoryDeltaSink

SETTINGS = {"model.sparse_features": "user_id,item_id,category",
            "model.dense_features": "price", "ingest.join_window_s": "30",
            "ingest.join_max_pending": "777", "ingest.negative_sample_rate": "0.5",
            "trainer.batch_size": "64", "metrics.port": "-1"}


class _Built(Exception):
    """Raised by the spy once a command has built its pipeline (nothing runs)."""


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, built: dict[str, Pipeline],
         name: str) -> None:
    def build(config: AppConfig, source: Any, **kwargs: Any) -> Pipeline:
        kwargs["registry"] = None if kwargs.get("registry") is None else CollectorRegistry()
        built[name] = factory.build_pipeline(config, source, **kwargs)
        raise _Built

    monkeypatch.setattr(module, "build_pipeline", build)


def _wiring(p: Pipeline) -> dict[str, Any]:
    """What a pipeline is made of, comparable across commands."""
    return {"tables": {n: t.dim for n, t in p.trainer.tables.items()},
            "model": p.trainer.spec,
            "joiner": (p.joiner.window_ms, p.joiner.rate, p.joiner.max_pending,
                       p.joiner.delayed_feedback, p.joiner.elapsed_ms, p.joiner.action_types),
            "audited": p.audit.model_features,
            "batch": (p.loop.batcher.sparse_features, p.loop.batcher.dense_features)}


def _events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(encode_json(e) + b"\n"
                              for e in SyntheticStream(default()).events(200)))
    return path


def test_train_evaluate_and_demo_build_one_pipeline_from_one_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamrec.cli import demo, evaluate, train

    path = _events(tmp_path)
    config = load_config(env={}, overrides={**SETTINGS, "ingest.source": "file",
                                            "ingest.path": str(path)})
    built: dict[str, Pipeline] = {}
    for module, name in ((train, "train"), (evaluate, "evaluate"), (demo, "demo")):
        _spy(monkeypatch, module, built, name)
    with pytest.raises(_Built):
        train.run_training(config, threading.Event())
    with pytest.raises(_Built):
        evaluate.evaluate(config, str(path), progress=False)
    with pytest.raises(_Built):
        demo.run_demo(config, duration_s=1, install_signal_handlers=False)
    assert _wiring(built["train"]) == _wiring(built["evaluate"])
    # The demo's model reads the synthetic stream's features: the same
    # pipeline as the factory builds from the demo's config.
    demo_config = built["demo"].config
    reference = build_pipeline(demo_config, MemorySource([]), sinks={"r": MemoryDeltaSink(None)})
    assert _wiring(built["demo"]) == _wiring(reference)
    assert demo_config.ingest.join_max_pending == 777
    # Who publishes: the demo to its replica; train to none configured; evaluate never.
    assert built["demo"].publisher is not None
    assert built["train"].publisher is None and built["evaluate"].publisher is None


def test_a_source_or_sinks_of_the_wrong_kind_are_named() -> None:
    config = load_config(env={}, overrides=SETTINGS)
    with pytest.raises(TypeError, match="source: a list is not an event source "
                                        r"\(it lacks poll, commit, seek, close, exhausted\)"):
        build_pipeline(config, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sinks: a mapping of replica name to delta sink, "
                                        "not a list"):
        build_pipeline(config, MemorySource([]), sinks=[MemoryDeltaSink(None)])  # type: ignore


def test_a_distributed_pipeline_without_torch_distributed_says_how_to_start_it() -> None:
    config = load_config(env={}, overrides={**SETTINGS, "model.history_features": "",
                                            "model.in_batch_terms": ""})
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised "
                                           r"\(start every rank under torchrun"):
        build_pipeline(config, MemorySource([]), distributed=True)


def test_a_pipeline_resumes_from_its_checkpointer_and_publishes_from_that_version(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = load_config(env={}, overrides=SETTINGS)
    events = list(SyntheticStream(default()).events(300))
    first = build_pipeline(config, MemorySource(events), checkpointer=Checkpointer(tmp_path))
    first.run()
    latest = Checkpointer(tmp_path).latest()
    assert latest is not None
    # (A checkpoint records the version replicas hold; here one taken by hand.)
    Checkpointer(tmp_path).save(latest.step + 1, latest.state, latest.offsets, version=41,
                                ledger=latest.ledger)
    replica_sink = MemoryDeltaSink(None)
    again = build_pipeline(config, MemorySource(events), sinks={"r": replica_sink},
                           checkpointer=Checkpointer(tmp_path))
    assert again.version == 41
    assert again.publisher is not None and again.publisher.version == 41
    assert again.trainer.examples == first.trainer.examples > 0

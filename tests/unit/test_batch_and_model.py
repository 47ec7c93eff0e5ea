"""Batching events into tensors, and the DeepFM model's forward/backward."""

from __future__ import annotations

import json

import math
import random
from collections import OrderedDict, defaultdict
from types import MappingProxyType

import pytest
import torch

from streamrec.ingest.batch import Batch, Batcher, dense_value
from streamrec.ingest.event import Event
from streamrec.ingest.ids import hash_id, to_id
from streamrec.config import ModelConfig
from streamrec.synthetic import PRESETS, SyntheticStream
from streamrec import native
from tests.reference_ops import python_paths
from streamrec.model.ctr import CTRModel, model_from_spec, model_spec, pool_features


def event(user: int, item: int, **features: tuple) -> Event:
    return Event(type="example", user_id=user, item_id=item, timestamp_ms=1000 + user,
                 features=features, label=float(user % 2))


def test_batcher_builds_jagged_ids_dense_and_labels() -> None:
    batcher = Batcher(["user_id", "item_id", "tags"], ["price"])
    events = [event(1, 10, tags=("a", "b"), price=(9.0,)),
              event(2, 20, price=(-3.0,)),
              event(3, 30, tags=(7,))]
    batch = batcher.build(events)
    assert len(batch) == 3
    assert batch.sparse["user_id"].values().tolist() == [1, 2, 3]
    assert batch.sparse["item_id"].values().tolist() == [10, 20, 30]
    tags = batch.sparse["tags"]
    assert tags.lengths().tolist() == [2, 0, 1]
    assert tags.values().tolist() == [hash_id("a"), hash_id("b"), 7]
    assert torch.allclose(batch.dense[:, 0], torch.tensor([math.log1p(9), -math.log1p(3), 0.0]))
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.timestamps_ms.tolist() == [1001, 1002, 1003]


def test_dense_value_ignores_strings_and_non_finite() -> None:
    assert dense_value(()) == 0.0
    assert dense_value(("x",)) == 0.0
    assert dense_value((float("inf"),)) == 0.0
    assert dense_value((0.0,)) == 0.0


def test_batched_dense_and_ids_match_the_per_value_functions() -> None:
    # Vectorised columns must equal dense_value / to_id value by value, whatever
    # the mix of types in the batch (numbers only, or strings and huge ints too).
    numeric = [1.5, -3, True, float("nan"), float("-inf"), 0, 1e300]
    odd = [*numeric, 2**70, "7", 10**30 * -1]
    for values in (numeric, odd):
        events = [event(i, i, x=(v,)) for i, v in enumerate(values)]
        events.append(event(99, 99))  # no value: dense 0, no id
        batch = Batcher(["tag"], ["x"]).build(events)
        want = [dense_value((v,)) for v in values] + [0.0]
        assert torch.allclose(batch.dense[:, 0], torch.tensor(want, dtype=torch.float32))
    ids = Batcher(["tag"], []).build([event(i, i, tag=(v,)) for i, v in
                                      enumerate(["a", 1, 1.0, True, "a", 2.5])])
    assert ids.sparse["tag"].values().tolist() == [hash_id("a"), 1, 1, 1, hash_id("a"),
                                                   hash_id(repr(2.5))]
    # 1e20 is hashed (no int64 can hold it), 10**20 is refused: an earlier
    # equal float must not make the batcher accept the int.
    batcher = Batcher(["tag"], [])
    assert batcher.build([event(1, 1, tag=(1e20,))]).sparse["tag"].values().tolist() == \
        [hash_id(repr(1e20))]
    with pytest.raises(ValueError, match="64-bit"):
        batcher.build([event(1, 1, tag=(10**20,))])


def test_batch_equals_the_event_by_event_definition_for_any_mix_of_events() -> None:
    # The batcher takes column-wise fast paths when every event has one value
    # of a feature; whatever the mix, a batch must equal the per-event reading.
    rng = random.Random(7)
    pool: list[tuple] = [(), ("a",), ("b", 3), (5,), (True,), (2.5,), (-1,), ("a", "a", "c")]
    for trial in range(200):
        n = rng.randint(1, 12)
        shape = rng.choice(["one each", "mixed"])
        events = []
        for i in range(n):
            features: dict | None = {}
            for name in ("tag", "x"):
                if shape == "one each":
                    features[name] = (rng.choice([7, "s", 1.5, -2]),)
                elif rng.random() < 0.8:
                    features[name] = rng.choice(pool)
            # Any Mapping: a defaultdict must read as absent what it lacks,
            # and nobody's features may change.
            features = rng.choice([dict, OrderedDict, MappingProxyType,
                                   lambda f: defaultdict(lambda: ("unknown",), f)])(features)
            if shape == "mixed" and rng.random() < 0.1:
                features = None
            events.append(Event(type="example", user_id=rng.randint(-5, 5), item_id=i,
                                timestamp_ms=rng.randint(0, 10**13), features=features,
                                label=rng.choice([None, 0.0, 1.0, 0, True]),
                                sample_rate=rng.choice([1.0, 0.25])))
        before = [dict(e.features) if e.features is not None else None for e in events]
        batch = Batcher(["user_id", "tag", "item_id"], ["x"]).build(events)
        assert [dict(e.features) if e.features is not None else None
                for e in events] == before
        for name in ("user_id", "tag", "item_id"):
            per_event = [(e.user_id,) if name == "user_id" else (e.item_id,)
                         if name == "item_id" else (e.features or {}).get(name, ())
                         for e in events]
            jt = batch.sparse[name]
            assert jt.lengths().tolist() == [len(v) for v in per_event], (trial, name)
            assert jt.values().tolist() == [to_id(v) for vs in per_event for v in vs]
        assert batch.dense[:, 0].tolist() == pytest.approx(
            [dense_value((e.features or {}).get("x", ())) for e in events])
        assert batch.labels.tolist() == [e.label or 0.0 for e in events]
        assert batch.sample_rates.tolist() == [e.sample_rate for e in events]
        assert batch.timestamps_ms.tolist() == [e.timestamp_ms for e in events]


def test_pooling_averages_each_examples_rows() -> None:
    batcher = Batcher(["tags"], [])
    batch = batcher.build([event(1, 1, tags=(1, 2)), event(2, 2), event(3, 3, tags=(3,))])

    def lookup(feature: str, ids: torch.Tensor) -> torch.Tensor:
        return ids.to(torch.float32).unsqueeze(1).repeat(1, 2)

    pooled = pool_features(batch.sparse, ["tags"], lookup)
    assert pooled.shape == (3, 1, 2)
    assert pooled[:, 0, 0].tolist() == [1.5, 0.0, 3.0]


def test_model_forward_backward_and_spec_round_trip() -> None:
    config = ModelConfig(sparse_features=["user_id", "item_id"], dense_features=["price"],
                         embedding_dim=4, hidden=[8], history_features=[])
    model = CTRModel(config)
    pooled = torch.randn(6, 2, model.row_dim, requires_grad=True)
    dense = torch.randn(6, 1)
    logits = model(pooled, dense)
    assert logits.shape == (6,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(6)).backward()
    assert pooled.grad is not None and bool(pooled.grad.abs().sum() > 0)
    rebuilt = model_from_spec(model_spec(config))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt(pooled.detach(), dense), logits.detach())


def test_rows_are_scaled_by_field_scale_and_older_specs_scale_none() -> None:
    features = [f"f{k}" for k in range(24)]
    config = ModelConfig(sparse_features=features, embedding_dim=3, history_features=[],
                         wide_terms=[])
    assert config.field_scale == 0.5
    model = CTRModel(config)
    pooled = torch.zeros(1, 24, model.row_dim)
    base = model(pooled, torch.zeros(1, 0))
    pooled[0, 3, -1] = 0.8  # a first-order weight moves the logit by half of it
    assert torch.allclose(model(pooled, torch.zeros(1, 0)), base + 0.4)
    spec = json.loads(model_spec(config))
    assert model_from_spec(json.dumps(spec)).config.field_scale == 0.5
    del spec["model"]["field_scale"]  # a trainer of an earlier release scaled nothing
    assert model_from_spec(json.dumps(spec)).config.field_scale == 1.0


def test_first_order_column_adds_linearly_to_the_logit() -> None:
    model = CTRModel(ModelConfig(embedding_dim=3, hidden=[4], history_features=[]))
    pooled = torch.zeros(1, 2, model.row_dim)
    base = model(pooled, torch.zeros(1, 0))
    pooled[0, 1, -1] = 0.7
    assert torch.allclose(model(pooled, torch.zeros(1, 0)), base + 0.7)


def _same_batch(a: Batch, b: Batch) -> None:
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
    for x, y in ((a.dense, b.dense), (a.labels, b.labels), (a.sample_rates, b.sample_rates),
                 (a.timestamps_ms, b.timestamps_ms)):
        assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_one_pass_builder_batches_as_the_python_path(preset: str) -> None:
    features = ["user_id", "item_id", "category", "country", "hour"]
    events = list(SyntheticStream(PRESETS[preset]()).events(3000))
    fast = Batcher(features, ["price"])
    assert native.batch_columns(events, (0, 1, "category", "country", "hour"),
                                ("price",), fast._ids, (1, 2, 6, 7, 8, 3)) is not None
    with python_paths():
        reference = Batcher(features, ["price"]).build(events)
    _same_batch(fast.build(events), reference)


def test_the_one_pass_builder_converts_every_value_type_as_the_python_path() -> None:
    big = 2**70
    events = [
        Event(type="example", user_id=u, item_id=-u, timestamp_ms=10**12 + u,
              features={"tag": (tag,), "x": x, "y": y}, label=label,
              sample_rate=rate)
        for u, (tag, x, y, label, rate) in enumerate([
            ("a", (2.5,), (), None, 1.0),
            (True, (-3,), ("text",), 1, 0.25),
            (1.0, (float("inf"),), (big,), True, 1),
            (2**63 - 1, (float("nan"),), (True, 4.0), 0.0, 0.5),
            (-(2**63), (0.0, 1.0), (-0.5,), 1.0, 1.0),
            (1e20, (10**6,), (False,), 0, 1.0),
        ])]
    batcher = Batcher(["user_id", "tag", "item_id"], ["x", "y"])
    columns = native.batch_columns(events, (0, "tag", 1), ("x", "y"), batcher._ids,
                                   (1, 2, 6, 7, 8, 3))
    assert columns is not None  # all of it in one pass
    with python_paths():
        reference = Batcher(["user_id", "tag", "item_id"], ["x", "y"]).build(events)
    _same_batch(batcher.build(events), reference)


@pytest.mark.parametrize("odd", [
    {"tag": ("a", "b")},            # jagged
    {},                             # absent
    {"tag": ["a"]},                 # a list, not a tuple
    {"tag": (2**64,)},              # does not fit: the Python path raises
    {"tag": (None,)},               # not a categorical value
])
def test_the_one_pass_builder_leaves_other_batches_to_the_python_path(odd: dict) -> None:
    events = [event(1, 2, tag=("a",)), Event(type="example", user_id=3, item_id=4,
                                             timestamp_ms=5, features=odd, label=1.0)]
    with python_paths():
        try:
            reference: Batch | Exception = Batcher(["tag"], []).build(events)
        except Exception as e:  # noqa: BLE001 (whatever the Python path raises)
            reference = e
    if isinstance(reference, Exception):
        with pytest.raises(type(reference)):
            Batcher(["tag"], []).build(events)
    else:
        _same_batch(Batcher(["tag"], []).build(events), reference)


@pytest.mark.parametrize("tags", ["one each", "jagged"])
def test_a_batchs_rows_and_their_concatenation_equal_batching_those_events(tags: str) -> None:
    # The training loop learns examples from rows of the batches it scored
    # them in: they must be exactly the rows batching the examples again gives.
    rng = random.Random(3)
    events = [Event(type="example", user_id=rng.randint(0, 9), item_id=i,
                    timestamp_ms=1000 + i, label=float(i % 3 == 0), sample_rate=0.5 + (i % 2) / 2,
                    features={"tag": (rng.choice("abc"),) if tags == "one each" else
                              tuple(rng.choice("abc") for _ in range(rng.randint(0, 3))),
                              "x": (rng.uniform(-9, 9),)})
              for i in range(40)]
    batcher = Batcher(["user_id", "tag", "item_id"], ["x"])
    whole = batcher.build(events)
    picked = [31, 2, 2, 17, 0, 39]
    _same_batch(whole.rows(torch.tensor(picked)), batcher.build([events[i] for i in picked]))
    _same_batch(whole.rows(torch.tensor([], dtype=torch.int64)), batcher.build([]))
    parts = [whole.rows(torch.arange(a, b)) for a, b in ((0, 9), (9, 10), (10, 40))]
    _same_batch(Batch.cat(parts), whole)
    with pytest.raises(ValueError, match="sparse features differ"):
        Batch.cat([whole, Batcher(["user_id"], ["x"]).build(events)])

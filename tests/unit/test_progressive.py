"""Progressive metrics: the AUC and logloss users read on dashboards and in `evaluate`."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.trainer.progressive import ProgressiveMetrics, ServedByVersion, exact_auc


def pairwise_auc(scores: list[float], labels: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.25, 0.5, 0.9]), st.booleans()),
                min_size=2, max_size=60))
def test_exact_auc_counts_every_pair_and_ties_as_half(pairs: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in pairs]
    labels = [float(y) for _, y in pairs]
    got = exact_auc(torch.tensor(scores), torch.tensor(labels))
    if 0 < sum(labels) < len(labels):
        assert got == pytest.approx(pairwise_auc(scores, labels))
    else:
        assert math.isnan(got)


def test_streaming_auc_and_logloss_match_the_exact_figures_over_the_whole_stream() -> None:
    gen = torch.Generator().manual_seed(3)
    truth = torch.rand(50_000, generator=gen) * 0.4
    labels = (torch.rand(50_000, generator=gen) < truth).float()
    probs = (truth + 0.05 * torch.randn(50_000, generator=gen)).clamp(0.001, 0.999)
    m = ProgressiveMetrics(window=1000)
    for start in range(0, 50_000, 256):
        m.update(probs[start:start + 256], labels[start:start + 256])
    assert m.examples == 50_000
    assert m.auc == pytest.approx(exact_auc(probs, labels), abs=1e-3)
    expected = -(labels * probs.log() + (1 - labels) * (1 - probs).log()).mean()
    assert m.logloss == pytest.approx(float(expected), rel=1e-5)


def test_window_figures_cover_only_the_most_recent_examples() -> None:
    m = ProgressiveMetrics(window=100)
    # 300 examples the model ranks perfectly, then 100 it ranks backwards.
    good = torch.linspace(0.01, 0.99, 300)
    m.update(good, (good > 0.5).float())
    bad = torch.linspace(0.01, 0.99, 100)
    for start in range(0, 100, 30):  # uneven chunks wrap the ring buffer
        chunk = bad[start:start + 30]
        m.update(chunk, (chunk < 0.5).float())
    assert m.window_auc == pytest.approx(0.0)
    assert m.auc > 0.5  # the whole-stream figure still remembers the good part
    snap = m.snapshot()
    assert snap["window_auc"] == m.window_auc and snap["examples"] == 400


def test_metrics_are_nan_until_both_classes_were_seen() -> None:
    m = ProgressiveMetrics()
    assert math.isnan(m.auc) and math.isnan(m.logloss) and math.isnan(m.window_auc)
    m.update(torch.tensor([0.2, 0.3]), torch.tensor([0.0, 0.0]))
    assert math.isnan(m.auc)
    assert math.isfinite(m.logloss)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        ProgressiveMetrics().update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, 1.0]))


def test_weighted_figures_equal_those_of_the_examples_repeated_by_their_weight() -> None:
    # Under negative down-sampling a kept negative stands for 1/rate negatives
    # of the true stream: weighting it so must equal counting it that often.
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(500, generator=g)
    labels = (torch.rand(500, generator=g) < probs).double()
    weights = torch.randint(1, 6, (500,), generator=g).double()
    weighted, repeated = ProgressiveMetrics(window=10_000), ProgressiveMetrics(window=10_000)
    weighted.update(probs[:300], labels[:300], weights[:300])
    weighted.update(probs[300:], labels[300:], weights[300:])
    times = weights.long()
    repeated.update(probs.repeat_interleave(times), labels.repeat_interleave(times))
    for name in ("auc", "logloss", "window_auc", "window_logloss"):
        assert getattr(weighted, name) == pytest.approx(getattr(repeated, name), rel=1e-9), name
    assert exact_auc(probs, labels, weights) == pytest.approx(
        exact_auc(probs.repeat_interleave(times), labels.repeat_interleave(times)), rel=1e-12)


def test_saved_metrics_continue_exactly_and_a_new_window_keeps_the_newest() -> None:
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.rand(70, generator=gen), (torch.rand(70, generator=gen) < 0.3).double(),
                torch.rand(70, generator=gen) + 0.5) for _ in range(6)]
    whole = ProgressiveMetrics(window=100)
    for probs, labels, w in batches[:4]:  # 280 examples: the ring has wrapped
        whole.update(probs, labels, w)
    state = whole.state_dict()
    restored = ProgressiveMetrics(window=100)
    restored.load_state_dict(state)
    assert restored.snapshot() == whole.snapshot()
    for probs, labels, w in batches[4:]:
        whole.update(probs, labels, w)
        restored.update(probs, labels, w)
    # (equal up to the order the window's terms are summed in)
    assert restored.snapshot() == pytest.approx(whole.snapshot(), rel=1e-12)
    # A smaller window after the restart: the newest 50 of the saved examples.
    smaller = ProgressiveMetrics(window=50)
    smaller.load_state_dict(state)
    newest = ProgressiveMetrics(window=50)
    for probs, labels, w in batches[:4]:
        newest.update(probs, labels, w)
    assert smaller.window_auc == newest.window_auc
    assert smaller.window_logloss == pytest.approx(newest.window_logloss, rel=1e-12)
    assert smaller.auc == whole_auc_at(state)
    with pytest.raises(ValueError, match="bins"):
        ProgressiveMetrics(bins=16).load_state_dict(state)


def whole_auc_at(state: dict) -> float:
    again = ProgressiveMetrics()
    again.load_state_dict(state)
    return again.auc


def test_calibration_is_mean_predicted_over_observed_click_rate() -> None:
    m = ProgressiveMetrics(window=2)
    m.update(torch.tensor([0.2, 0.2, 0.2, 0.2]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert m.calibration == pytest.approx(0.2 / 0.25)
    m.update(torch.tensor([0.9, 0.9]), torch.tensor([1.0, 0.0]))
    assert m.window_calibration == pytest.approx(0.9 / 0.5)  # the last two only
    restored = ProgressiveMetrics(window=2)
    restored.load_state_dict(m.state_dict())
    assert restored.calibration == pytest.approx(m.calibration)


def test_served_quality_is_kept_for_the_newest_versions_only() -> None:
    served = ServedByVersion(versions=3)
    for version in [1, 2, 3, 4, None]:
        served.update(torch.tensor([0.8, 0.1]), torch.tensor([1.0, 0.0]), [version, version])
    assert set(served.by_version) == {2, 3, 4, None}  # version 1 gave way to 4
    served.update(torch.tensor([0.5]), torch.tensor([1.0]), [1])  # older than every tracked one
    assert served.untracked == 1 and 1 not in served.by_version
    assert served.by_version[4].auc == 1.0 and served.by_version[4].examples == 2
    restored = ServedByVersion(versions=3)
    restored.load_state_dict(served.state_dict())
    assert set(restored.by_version) == {2, 3, 4, None} and restored.untracked == 1

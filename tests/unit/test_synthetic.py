"""The synthetic stream has the properties the demo and the benchmarks rely on."""

from __future__ import annotations

from collections import Counter

import pytest

from streamrec.synthetic import PRESETS, SyntheticConfig, SyntheticStream, default


def test_same_seed_same_stream_and_another_seed_another_stream() -> None:
    a = list(SyntheticStream(default()).events(2000))
    b = list(SyntheticStream(default()).events(2000))
    c = list(SyntheticStream(SyntheticConfig(seed=8)).events(2000))
    assert a == b
    assert [e.item_id for e in a] != [e.item_id for e in c]


def test_events_are_time_ordered_labeled_examples_with_side_features() -> None:
    events = list(SyntheticStream(default()).events(3000))
    times = [e.timestamp_ms for e in events]
    assert times == sorted(times)
    assert {e.type for e in events} == {"example"}
    assert {e.label for e in events} == {0.0, 1.0}
    assert all(set(e.features) == {"category", "country", "hour", "price"} for e in events)
    assert len({e.event_id for e in events}) == len(events)


def test_popularity_is_skewed_and_new_ids_keep_arriving() -> None:
    events = list(SyntheticStream(default()).events(40_000))
    items = Counter(e.item_id for e in events)
    top = sum(n for _, n in items.most_common(len(items) // 10))
    assert top > 0.5 * len(events)  # the top 10% of items take most of the traffic
    first_half = {e.user_id for e in events[:20_000]}
    late_users = {e.user_id for e in events[20_000:]} - first_half
    assert len(late_users) > 100


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_yields_a_learnable_stream(name: str) -> None:
    pairs = list(SyntheticStream(PRESETS[name]()).events_with_truth(5000))
    ctr = sum(e.label for e, _ in pairs) / len(pairs)
    assert 0.05 < ctr < 0.5
    assert all(0.0 < p < 1.0 for _, p in pairs)


def test_bad_config_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="new_user_rate"):
        SyntheticConfig(new_user_rate=1.5)

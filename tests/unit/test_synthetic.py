"""The synthetic stream has the properties the demo and the benchmarks rely on."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest

from streamrec.ingest.event import Event
from streamrec.synthetic import PRESETS, SyntheticConfig, SyntheticStream, default, drifting, \
    production


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


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_stream_does_not_depend_on_the_chunk_size(name: str) -> None:
    def stream(chunk: int) -> list[tuple[Event, float]]:
        return list(SyntheticStream(PRESETS[name]()).events_with_truth(3000, chunk=chunk))

    reference = stream(1)  # one event at a time: the documented order of things
    assert stream(7) == reference
    assert stream(1024) == reference


def test_a_users_preferences_take_one_drift_step_per_activity() -> None:
    cfg = dataclasses.replace(drifting(), new_user_rate=0.0, new_item_rate=0.0)
    stream = SyntheticStream(cfg)
    weights = np.diff(np.concatenate([[0.0], stream.users.cdf]))
    top = np.argsort(-weights)[:50]  # the busiest user slots
    before = stream.users.vectors[top].copy()
    activity = Counter(e.user_id for e in stream.events(4096))
    n = np.array([activity[int(user_id)] for user_id in stream.users.ids[top]])
    after = stream.users.vectors[top]
    cos = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    keep = math.sqrt(1 - cfg.drift ** 2)
    # n norm-preserving steps leave a cosine of about keep**n; one user's is
    # noisy in dim 8, the mean over 50 users is not. One step per chunk of
    # 1024 events instead would leave the busiest users near keep**4 ~ 0.97.
    assert abs(np.mean(cos - keep ** n)) < 0.08
    assert n.max() > 300 and np.mean(cos[n >= 40]) < 0.7


def test_a_new_id_shows_from_the_event_that_hands_it_out() -> None:
    cfg = default()  # no bursts: every new id is handed out by an event of its own
    events = list(SyntheticStream(cfg).events(5000))
    for slots, ids in ((cfg.user_slots, [e.user_id for e in events]),
                       (cfg.item_slots, [e.item_id for e in events])):
        new_ids = [i for i in dict.fromkeys(ids) if i > slots]  # in order of first appearance
        assert len(new_ids) > 5
        # ids are handed out in event order, and none shows before its own event
        assert new_ids == list(range(slots + 1, slots + 1 + len(new_ids)))


def test_production_form_is_the_labeled_stream_as_impressions_and_delayed_clicks() -> None:
    from streamrec.ingest.joiner import Joiner

    config = production()
    labeled = list(SyntheticStream(config).events(6000))
    joined = list(SyntheticStream(config).joined_events(6000))
    times = [e.timestamp_ms for e in joined]
    assert times == sorted(times)
    impressions = [e for e in joined if e.type == "impression"]
    clicks = [e for e in joined if e.type == "click"]
    assert [e._replace(type="example", label=None) for e in impressions] == \
        [e._replace(label=None) for e in labeled]
    shown = {e.request_id: e.timestamp_ms for e in impressions}
    delays = sorted(c.timestamp_ms - shown[c.request_id] for c in clicks)
    window_ms = config.join_window_s * 1000
    late = sum(d > window_ms for d in delays)
    assert 0 < late < 0.1 * len(delays)  # a long tail: some clicks come after the window
    assert delays[len(delays) // 2] < 10_000  # most within seconds
    # A joiner with the generator's window labels the impressions as the labeled form does.
    j = Joiner(["click"], window_s=config.join_window_s)
    j.push(joined)
    j.flush()
    decided = {e.event_id: e.label for e in j.take_outcomes()}
    assert decided == {e.event_id: e.label for e in labeled}
    # List features, and bursts of one user's events.
    assert {len(e.features["tags"]) for e in labeled} == {1, 2, 3}
    users = [e.user_id for e in labeled]
    assert max(Counter(users[i:i + 40]).most_common(1)[0][1] for i in range(0, 6000, 40)) >= 10

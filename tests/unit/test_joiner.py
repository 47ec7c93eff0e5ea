"""The joiner turns impressions and actions into labeled examples."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from streamrec.ingest.event import Event
from streamrec.ingest.joiner import Joiner as TrainingJoiner
from streamrec.ingest.metrics import IngestMetrics

T0 = 1_700_000_000_000


class Joiner(TrainingJoiner):
    """The labels the joiner decides, as it decides them (``take_outcomes``).

    Every ``delayed_feedback`` mode labels alike; what each trains on, and
    when, is tested apart (``TrainingJoiner``).
    """

    def push(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().push(*args, **kwargs)
        return self.take_outcomes(settled=False)

    def flush(self):  # type: ignore[no-untyped-def]
        super().flush()
        return self.take_outcomes(settled=False)


def imp(request: str, item: int, t: int, user: int = 1) -> Event:
    return Event("impression", user, item, T0 + t, request_id=request,
                 features={"category": ("c",)})


def act(request: str, item: int, t: int, kind: str = "click") -> Event:
    return Event(kind, 1, item, T0 + t, request_id=request)


# Without a request_id: keyed by (user, item), as many producers send them.
def shown(t: int) -> Event:
    return Event("impression", 1, 7, T0 + t)


def click(t: int) -> Event:
    return Event("click", 1, 7, T0 + t)


def test_an_action_within_the_window_labels_its_impression_positive_at_once() -> None:
    j = Joiner(["click"], window_s=10)
    assert j.push([imp("r1", 7, 0), imp("r1", 8, 0)]) == []
    out = j.push([act("r1", 7, 3_000)])
    assert [(e.item_id, e.label, e.type) for e in out] == [(7, 1.0, "example")]
    assert out[0].features == {"category": ("c",)}  # the impression's features
    assert out[0].timestamp_ms == T0  # and its time
    assert j.pending == 1
    assert j.push([act("r1", 7, 4_000)]) == []  # a second click counts once


def test_unmatched_impressions_become_negatives_once_the_watermark_passes_the_window() -> None:
    j = Joiner(["click"], window_s=10)
    j.push([imp("r1", 7, 0), imp("r2", 9, 5_000)])
    assert j.push([act("r3", 1, 9_000)]) == []  # orphan action, nothing expired yet
    out = j.push([imp("r4", 3, 12_000)])
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0)]
    late = j.push([act("r2", 9, 16_000)])  # 11 s after its impression: too late
    assert [(e.item_id, e.label) for e in late] == [(9, 0.0)]
    assert [(e.item_id, e.label) for e in j.flush()] == [(3, 0.0)]
    assert j.pending == 0


def test_examples_pass_through_and_other_types_are_dropped_and_counted() -> None:
    registry = CollectorRegistry()
    j = TrainingJoiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    example = Event("example", 1, 2, T0, label=1.0)
    assert j.push([example, Event("hover", 1, 2, T0), act("x", 1, 0)]) == [example]
    assert j.flush() == []  # the action's impression never came: an orphan
    get = registry.get_sample_value
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "unknown_type"}) == 1
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "orphan_action"}) == 1


def test_negative_sampling_is_deterministic_and_records_the_rate() -> None:
    def run() -> list[Event]:
        j = TrainingJoiner(["click"], window_s=1, rate=0.25, seed=3)
        j.push([imp(f"r{i}", i, 0) for i in range(4000)])
        return j.flush()

    first, second = run(), run()
    assert [e.item_id for e in first] == [e.item_id for e in second]
    kept = len(first) / 4000
    assert 0.2 < kept < 0.3
    assert {e.sample_rate for e in first} == {0.25}
    # Positives are never sampled away.
    j = TrainingJoiner(["click"], window_s=1, rate=0.01)
    j.push([imp(f"r{i}", i, 0) for i in range(100)])
    j.push([act(f"r{i}", i, 10) for i in range(100)])
    assert len(j.flush()) == 100


def test_pending_impressions_survive_a_checkpoint(tmp_path: Path) -> None:
    j = Joiner(["click"], window_s=10)
    j.push([imp("r1", 7, 0), imp("r2", 8, 1_000)])
    state = j.state_dict()
    # Checkpoints hold plain containers only (torch.load with weights_only=True).
    path = tmp_path / "joiner.pt"
    torch.save(state, path)
    restored = Joiner(["click"], window_s=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.pending == 2
    out = restored.push([act("r2", 8, 2_000)])
    assert [(e.item_id, e.label, e.features) for e in out] == [(8, 1.0, {"category": ("c",)})]


def test_the_pending_gauge_follows_flush_and_restore() -> None:
    def gauge(registry: CollectorRegistry) -> float | None:
        return registry.get_sample_value("streamrec_ingest_joiner_pending_impressions")

    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    j.push([imp("r1", 7, 0), imp("r2", 8, 1_000)])
    state = j.state_dict()
    assert gauge(registry) == 2
    assert len(j.flush()) == 2 and gauge(registry) == 0  # the end of a finite stream
    restored_registry = CollectorRegistry()
    restored = Joiner(["click"], window_s=10, metrics=IngestMetrics(restored_registry))
    restored.load_state_dict(state)
    assert gauge(restored_registry) == 2


def test_an_action_read_before_its_impression_still_labels_it_positive() -> None:
    # Impressions and actions on separate topics: the consumer often hands
    # over the click first. It waits for the impression (within the window).
    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    assert j.push([act("r1", 7, 3_000), act("r2", 8, 4_000)]) == []
    out = j.push([imp("r1", 7, 0), imp("r9", 9, 1_000)])
    assert [(e.item_id, e.label) for e in out] == [(7, 1.0)]
    assert j.pending == 1
    # r2's impression never comes: once the watermark passes its time + window,
    # the action is an orphan; a click far after its impression is one too.
    out = j.push([act("r5", 5, 30_000), imp("r5", 5, 2_000)])
    assert [(e.item_id, e.label) for e in out] == [(9, 0.0), (5, 0.0)]
    # (The late click may be a later showing's: it waits, then is an orphan too.)
    assert j.flush() == []
    get = registry.get_sample_value
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "orphan_action"}) == 2


def test_a_redelivered_impression_is_not_trained_again_with_the_opposite_label() -> None:
    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, metrics=IngestMetrics(registry))
    first = Event("impression", 1, 7, T0, request_id="r1", event_id="imp-1")
    assert [(e.label) for e in j.push([first, act("r1", 7, 1_000)])] == [1.0]
    assert j.push([first]) == []  # the producer's retry, after the join
    no_id = imp("r2", 8, 2_000)
    j.push([no_id, imp("r3", 3, 15_000)])  # r2 expires as a negative
    assert j.push([no_id]) == []  # same key and time: the same impression
    assert j.pending == 1
    get = registry.get_sample_value
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "duplicate_impression"}) == 2
    # The same user and item shown again later is a new impression.
    assert j.push([imp("r2", 8, 16_000)]) == [] and j.pending == 2


def test_one_event_stamped_ahead_of_the_clock_neither_expires_nor_blocks_the_others(
        monkeypatch) -> None:
    now = 1_800_000_000_000  # this machine's clock, in ms
    monkeypatch.setattr("streamrec.ingest.joiner.time.time", lambda: now / 1000)
    ahead = now + 6 * 3600 * 1000  # a producer clock six hours fast

    def at(kind: str, request: str, t: int) -> Event:
        return Event(kind, 1, 7, t, request_id=request)

    # A skewed click: the impressions read after it still get their clicks.
    j = Joiner(["click"], window_s=10)
    out = j.push([at("click", "skew", ahead)])
    for i in range(5):
        out += j.push([at("impression", f"r{i}", now - 3_000 + i * 500)])
        out += j.push([at("click", f"r{i}", now - 2_700 + i * 500)])
    assert [e.label for e in out] == [1.0] * 5
    # A skewed impression holds back the impressions behind it (expiry follows
    # arrival order) for one window of this clock, not for six hours.
    k = Joiner(["click"], window_s=10)
    k.push([at("impression", "skew", ahead)])
    k.push([at("impression", f"q{i}", now - 1_000 + i) for i in range(10)])
    now += 20_000
    expired = k.push([at("impression", "late", now)])
    assert len(expired) == 11 and k.pending == 1


def test_waiting_actions_and_resolved_impressions_survive_a_checkpoint(tmp_path: Path) -> None:
    j = Joiner(["click"], window_s=10)
    seen = Event("impression", 1, 7, T0, request_id="r1", event_id="imp-1")
    unnamed = Event("impression", 2, 9, T0 + 100, request_id="r3")  # known by key and time
    j.push([seen, act("r1", 7, 500), act("r2", 8, 1_000), unnamed, act("r3", 9, 700)])
    path = tmp_path / "joiner.pt"
    torch.save(j.state_dict(), path)
    restored = Joiner(["click"], window_s=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    out = restored.push([imp("r2", 8, 0), seen, unnamed])
    # imp-1 and the unnamed impression are duplicates
    assert [(e.item_id, e.label) for e in out] == [(8, 1.0)]
    assert restored.pending == 0


def test_an_action_stamped_before_an_impression_does_not_label_it() -> None:
    # Without a request_id, the key is (user, item): the same item shown
    # again later is a new impression, and a double click on the first one
    # (or a redelivered click) must not label the second positive.
    j = Joiner(["click"], window_s=10)
    out = j.push([shown(0), click(1_000), click(2_000), shown(30_000)])
    out += j.push([click(2_500)])  # a late redelivery, read after the second showing
    assert [(e.timestamp_ms - T0, e.label) for e in out] == [(0, 1.0)]
    assert [e.label for e in j.push([click(31_000)])] == [1.0]  # its own click still counts
    j.push([shown(60_000), click(55_000)])  # shown once more, not clicked (a stale click)
    assert [(e.timestamp_ms - T0, e.label) for e in j.flush()] == [(60_000, 0.0)]
    # Clocks of different services: a click stamped just before still counts.
    k = Joiner(["click"], window_s=10)
    assert [e.label for e in k.push([click(9_500), shown(10_000)])] == [1.0]


def test_a_stale_waiting_click_does_not_crowd_out_this_showings_click() -> None:
    # A redelivered click of an earlier showing waits for an impression; the
    # next showing's real click, read before its impression, must still count.
    j = Joiner(["click"], window_s=10)
    out = j.push([shown(0), click(1_000)])  # the first showing, clicked
    out += j.push([click(1_000)])  # its click, redelivered: waits (no pending impression)
    out += j.push([click(5_500), shown(5_000)])  # the next showing's click, then itself
    assert [(e.timestamp_ms - T0, e.label) for e in out] == [(0, 1.0), (5_000, 1.0)]


def test_a_partition_ahead_does_not_expire_a_partition_behind(monkeypatch) -> None:
    # Catching up after a restart, partition 1 is read 100 s of event time
    # ahead of partition 0: its events must not expire partition 0's
    # impressions before their clicks (read later from partition 0) arrive.
    wall = [1000.0]
    monkeypatch.setattr("streamrec.ingest.joiner.time.monotonic", lambda: wall[0])
    p0, p1 = ("events", 0), ("events", 1)
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0), imp("r1", 8, 100_000)], [p0, p1])
    out += j.push([act("r0", 7, 2_000), act("r1", 8, 101_000)], [p0, p1])
    assert sorted((e.item_id, e.label) for e in out) == [(7, 1.0), (8, 1.0)]
    # A pause of the loop (a checkpoint) longer than idle_s is not a partition
    # going quiet: partition 0 still holds the watermark.
    assert j.push([imp("r2", 9, 110_000)], [p1]) == []
    wall[0] += 11
    assert j.push([imp("r3", 3, 125_000)], [p1]) == []
    # Partition 0 goes quiet (or is assigned away): after idle_s of wall time
    # and 100 pushes without it, it stops holding the watermark back.
    expired = []
    for i in range(100):
        expired += j.push([Event("example", 1, 1, T0 + 125_000 + i, label=0.0)], [p1])
    assert [(e.item_id, e.label) for e in expired if e.item_id != 1] == [(9, 0.0)]


def test_an_assigned_partition_not_read_yet_holds_the_watermark(monkeypatch) -> None:
    # First start on a backlog, impressions and clicks on separate topics: the
    # first fetches bring impressions only, 100 s of them. Their clicks, in
    # the clicks topic, are read later: the impressions must wait for them.
    wall = [1000.0]
    monkeypatch.setattr("streamrec.ingest.joiner.time.monotonic", lambda: wall[0])
    shows, clicks = ("impressions", 0), ("clicks", 0)
    both = [shows, clicks]
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0), imp("r1", 8, 50_000)], [shows, shows], both)
    out += j.push([imp("r2", 9, 100_000)], [shows], both)
    assert out == []
    out += j.push([act("r0", 7, 2_000), act("r1", 8, 51_000)], [clicks, clicks], both)
    assert [(e.item_id, e.label) for e in out] == [(7, 1.0), (8, 1.0)]
    # An assigned partition that never delivers (an empty one) holds the
    # watermark for idle_s of wall time, however many polls bring events (a
    # first fetch comes within seconds), then goes quiet: on a slow stream,
    # 100 pushes would be minutes.
    empty = ("clicks", 1)
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0)], [shows], [shows, empty])
    for i in range(150):
        out += j.push([imp(f"n{i}", 100 + i, 60_000)], [shows], [shows, empty])
    assert out == []  # many polls in no time: held
    wall[0] += 11
    out += j.push([imp("late", 5, 60_000)], [shows], [shows, empty])
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0)]
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0)], [shows], [shows, empty])
    out += j.push([imp("r1", 8, 60_000)], [shows], [shows, empty])
    assert out == []
    wall[0] += 11  # a slow stream: a few polls in idle_s
    out += j.push([imp("late", 5, 60_000)], [shows], [shows, empty])
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0)]
    # A partition assigned away stops holding the watermark at once.
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0)], [shows], both)
    out += j.push([imp("r1", 8, 60_000)], [shows], both)
    assert out == []
    out += j.push([imp("r2", 9, 60_000)], [shows], [shows])  # clicks revoked
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0)]
    # An empty assignment (before the group join, during a rebalance) revokes
    # nothing: a partition that had gone quiet does not hold the watermark again.
    j = Joiner(["click"], window_s=10, idle_s=10)
    out = j.push([imp("r0", 7, 0)], [shows], [shows, empty])
    wall[0] += 11
    for i in range(101):
        out += j.push([imp(f"n{i}", 100 + i, 1_000 + i)], [shows], [shows, empty])
    assert j.push([], [], []) == []
    out += j.push([imp("r1", 8, 30_000)], [shows], [shows, empty])
    assert (7, 0.0) in [(e.item_id, e.label) for e in out]


def test_after_a_restore_a_partition_not_heard_from_yet_still_holds_the_watermark(
        tmp_path: Path) -> None:
    # The first poll after a restart often holds one partition only: it must
    # not expire the other partition's restored impressions.
    p0, p1 = ("events", 0), ("events", 1)
    j = Joiner(["click"], window_s=10)
    j.push([imp("r0", 7, 0), imp("r1", 8, 1_000)], [p0, p1])
    path = tmp_path / "joiner.pt"
    torch.save(j.state_dict(), path)
    restored = Joiner(["click"], window_s=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    out = restored.push([imp("r9", 9, 60_000)], [p1])  # partition 1, far ahead
    out += restored.push([act("r0", 7, 2_000)], [p0])  # partition 0's click, read next
    assert [(e.item_id, e.label) for e in out] == [(7, 1.0)]


def test_an_action_too_late_for_one_showing_can_be_the_next_ones() -> None:
    # Same key, impressions at 0 s and 15 s, a click at 20 s (window 10 s):
    # whatever the order they are read in, the click is the second showing's.
    for order in ([shown(0), click(20_000), shown(15_000)],
                  [click(20_000), shown(0), shown(15_000)]):
        out = Joiner(["click"], window_s=10).push(order)
        assert sorted((e.timestamp_ms - T0, e.label) for e in out) == \
            [(0, 0.0), (15_000, 1.0)], order


def test_a_click_after_the_window_waits_for_a_later_showing() -> None:
    # Without a request_id the key is (user, item): clicks at 10 s and 65 s
    # read before showings at 0 s and 62 s belong one to each.
    j = Joiner(["click"], window_s=60)
    out = j.push([click(10_000), click(65_000), shown(0)])
    out += j.push([shown(62_000)])
    assert [(e.timestamp_ms - T0, e.label) for e in out] == [(0, 1.0), (62_000, 1.0)]


def test_waiting_actions_are_bounded_in_all() -> None:
    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=10, max_pending=10, metrics=IngestMetrics(registry))
    j.push([act(f"r{i % 5}", 7, i) for i in range(40)])  # 5 keys, 8 actions each
    state = j.state_dict()
    assert len(state["early_actions"]) <= 10
    orphans = registry.get_sample_value("streamrec_ingest_joiner_dropped_total",
                                        {"reason": "orphan_action"})
    assert orphans + len(state["early_actions"]) == 40


def test_overflow_labels_the_oldest_negative_early_and_counts_it_once() -> None:
    # Past max_pending the oldest impression is emitted as a negative before
    # its window ends. It is not dropped: it counts as an example (negative)
    # and as overflow, and a click that comes later for it is an orphan.
    registry = CollectorRegistry()
    j = Joiner(["click"], window_s=60, max_pending=3, metrics=IngestMetrics(registry))
    out = j.push([imp(f"r{i}", i, i) for i in range(5)])
    assert [(e.request_id, e.label) for e in out] == [("r0", 0.0), ("r1", 0.0)]
    out = j.push([act("r0", 0, 1_000), act("r4", 4, 1_000)])
    assert [(e.request_id, e.label) for e in out] == [("r4", 1.0)]

    def get(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    assert get("streamrec_ingest_joiner_overflow_total") == 2
    assert get("streamrec_ingest_joiner_examples_total", {"label": "negative"}) == 2
    assert get("streamrec_ingest_joiner_dropped_total", {"reason": "overflow"}) is None


def test_an_older_showing_read_late_does_not_displace_the_newer_one(monkeypatch) -> None:
    # Showings of one key at 5 s and (read second) 0 s, then a click at 6 s:
    # the click is the 5 s showing's, whatever order the showings came in.
    for order in ([shown(5_000), shown(0)], [shown(0), shown(5_000)]):
        j = Joiner(["click"], window_s=10)
        out = j.push(order)
        out += j.push([click(6_000)])
        out += j.flush()
        assert sorted((e.timestamp_ms - T0, e.label) for e in out) == [(0, 0.0), (5_000, 1.0)]
    # "Newer" by the clock-capped time: a showing stamped an hour ahead (a
    # skewed producer) counts as shown when it arrived, so the key's real next
    # showing, two seconds later, still takes its click.
    wall = [T0 / 1000]
    monkeypatch.setattr("streamrec.ingest.joiner.time.time", lambda: wall[0])
    j = Joiner(["click"], window_s=10)
    out = j.push([shown(3_600_000)])
    wall[0] += 2
    out += j.push([shown(2_000)])
    out += j.push([click(2_500)])
    assert sorted((e.timestamp_ms - T0, e.label) for e in out) == [(2_000, 1.0),
                                                                   (3_600_000, 0.0)]


def test_a_burst_of_clicks_does_not_crowd_out_the_next_showings_click() -> None:
    j = Joiner(["click"], window_s=10)
    out = j.push([shown(0)] + [click(1_000 + 100 * i) for i in range(5)])
    out += j.push([click(5_500)])  # the next showing's click, read before it
    out += j.push([shown(5_000)])
    assert [(e.timestamp_ms - T0, e.label) for e in out] == [(0, 1.0), (5_000, 1.0)]


def test_each_waiting_action_expires_by_its_own_time() -> None:
    # A redelivered old click joins a key after a fresh one: it must not take
    # the fresh click with it when it expires.
    j = Joiner(["click"], window_s=10)
    out = j.push([shown(0), click(1_000)])
    out += j.push([click(100_000)])  # a later showing's click, read before it
    out += j.push([click(1_000)])  # a redelivery of the first click
    out += j.push([shown(99_500)])
    assert [(e.timestamp_ms - T0, e.label) for e in out] == [(0, 1.0), (99_500, 1.0)]


def test_a_late_impressions_retry_is_still_a_duplicate() -> None:
    # It expires the moment it arrives (its window is long past): the memory of
    # resolved impressions must outlive that push, or its retry trains again.
    j = Joiner(["click"], window_s=10)
    out = j.push([act("o", 1, 100_000)])
    late = Event("impression", 1, 7, T0 + 50_000, request_id="r1", event_id="imp-1")
    out += j.push([late])
    out += j.push([act("r1", 7, 51_000), late])
    assert [(e.request_id, e.label) for e in out if e.request_id == "r1"] == [("r1", 0.0)]


def test_a_partition_quiet_before_a_checkpoint_stays_quiet_after_the_restore(
        tmp_path: Path, monkeypatch) -> None:
    wall = [1000.0]
    monkeypatch.setattr("streamrec.ingest.joiner.time.monotonic", lambda: wall[0])
    p0, p1 = ("events", 0), ("events", 1)

    def run(restore: bool) -> tuple[int, int]:
        j = Joiner(["click"], window_s=10, idle_s=10)
        j.push([imp("q", 7, 0)], [p0])  # partition 0 then goes quiet (assigned away)
        wall[0] += 11
        for i in range(101):
            j.push([Event("example", 0, 0, T0 + i, label=0.0)], [p1])
        if restore:
            torch.save(j.state_dict(), tmp_path / "j.pt")
            j = Joiner(["click"], window_s=10, idle_s=10)
            j.load_state_dict(torch.load(tmp_path / "j.pt", weights_only=True))
        out = j.push([imp(f"n{i}", i, 20_000 + i * 1000) for i in range(40)], [p1] * 40)
        return len([e for e in out if e.type == "example"]), j.pending

    assert run(restore=True) == run(restore=False)


def test_wait_holds_a_clicked_impression_until_its_window_closes_then_keeps_time_order() -> None:
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="wait")
    assert j.push([imp("r1", 7, 0), imp("r2", 8, 1_000), act("r2", 8, 2_000)]) == []
    # The click's label is decided, but r1's window is open: no outcome is settled yet.
    assert [(e.item_id, e.label) for e in j.take_outcomes(settled=False)] == [(8, 1.0)]
    assert j.take_outcomes() == []
    out = j.push([imp("r3", 9, 11_500)])
    # Window of r1 closed (a negative), then r2's: impression-time order, both labels.
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0), (8, 1.0)]
    assert [(e.item_id, e.label) for e in j.take_outcomes()] == [(7, 0.0)]
    assert [(e.item_id, e.label) for e in j.flush()] == [(9, 0.0)]


def test_fake_negative_learns_an_impression_at_once_and_again_when_clicked() -> None:
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="fake_negative")
    out = j.push([imp("r1", 7, 0), imp("r2", 8, 0)])
    assert [(e.item_id, e.label, e.fake_negative) for e in out] == [(7, 0.0, True),
                                                                    (8, 0.0, True)]
    out = j.push([act("r1", 7, 3_000)])
    assert [(e.item_id, e.label, e.fake_negative) for e in out] == [(7, 1.0, True)]
    # r2's window closes: its label is known (a negative) but nothing more is learned.
    assert j.push([imp("r3", 9, 12_000)]) == [imp("r3", 9, 12_000)._replace(
        type="example", label=0.0, fake_negative=True)]
    assert [(e.item_id, e.label) for e in j.take_outcomes()] == [(7, 1.0), (8, 0.0)]


def test_outcomes_carry_the_score_given_on_arrival_across_a_checkpoint() -> None:
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="wait")
    j.push([imp("r1", 7, 0)._replace(predicted=0.25), imp("r2", 8, 500)._replace(predicted=0.5),
            act("r2", 8, 1_000)])
    assert j.take_outcomes() == []  # (r1's window is open)
    restored = TrainingJoiner(["click"], window_s=10, delayed_feedback="wait")
    restored.load_state_dict(j.state_dict())
    out = restored.push([imp("r3", 9, 20_000)])
    # The held positive and the pending impression both come back with their
    # scores, and so does r2's outcome, decided before the checkpoint.
    assert [(e.item_id, e.label, e.predicted) for e in out] == [(7, 0.0, 0.25), (8, 1.0, 0.5)]
    assert [(e.item_id, e.label, e.predicted) for e in restored.take_outcomes()] == [
        (7, 0.0, 0.25), (8, 1.0, 0.5)]


def test_fake_negative_after_an_elapsed_time_learns_early_clicks_once() -> None:
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="fake_negative", elapsed_s=2)
    # r1 clicked within the 2 s, r2 after them, r3 never.
    assert j.push([imp("r1", 7, 0), imp("r2", 8, 0), imp("r3", 9, 0), act("r1", 7, 1_000)]) == []
    out = j.push([imp("r4", 10, 2_500)])  # 2 s have passed for r1..r3
    assert sorted((e.item_id, e.label) for e in out) == [(7, 1.0), (8, 0.0), (9, 0.0)]
    assert all(e.fake_negative for e in out)
    out = j.push([act("r2", 8, 4_000)])
    assert [(e.item_id, e.label) for e in out] == [(8, 1.0)]  # learned a second time
    assert j.duplicated_share == (1 + 1) / (2 + 1)  # one of two clicks came after its negative
    assert [(e.item_id, e.label) for e in j.flush()] == [(10, 0.0)]


def test_scores_given_after_a_push_reach_what_the_push_made_of_the_impressions() -> None:
    # A loop may score impressions after pushing them (to see the labels the
    # push released before each): the held example, the outcome and the
    # still pending impression made of them carry the score then.
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="wait")
    marks: list[int] = []
    shown = [imp("r1", 7, 0), imp("r2", 8, 500)]
    assert j.push([*shown, act("r1", 7, 1_000)], marks=marks) == []
    assert marks == [0, 0, 0]
    j.annotate(e._replace(predicted=p) for e, p in zip(shown, [0.25, 0.5]))
    marks = []
    out = j.push([imp("r3", 9, 20_000)], marks=marks)
    assert marks == [0]  # (both left when the watermark moved, after the event)
    assert [(e.item_id, e.label, e.predicted) for e in out] == [(7, 1.0, 0.25), (8, 0.0, 0.5)]
    assert [(e.item_id, e.predicted) for e in j.take_outcomes()] == [(7, 0.25), (8, 0.5)]


def test_marks_count_the_examples_ready_after_each_event() -> None:
    j = TrainingJoiner(["click"], window_s=10, delayed_feedback="fake_negative")
    marks: list[int] = []
    shown = [imp("r1", 7, 0), imp("r2", 8, 0)]
    out = j.push([*shown, act("r1", 7, 1_000)], marks=marks)
    assert marks == [1, 2, 3]
    assert [(e.item_id, e.label) for e in out] == [(7, 0.0), (8, 0.0), (7, 1.0)]
    # The examples the push returned take their impressions' scores too.
    out = j.annotate([e._replace(predicted=p) for e, p in zip(shown, [0.25, 0.5])], out)
    assert [(e.item_id, e.label, e.predicted) for e in out] == [
        (7, 0.0, 0.25), (8, 0.0, 0.5), (7, 1.0, 0.25)]


def test_fake_negatives_and_held_clicks_come_out_in_impression_order() -> None:
    # With an elapsed time (3 s), r0 and r2 are clicked before their time to
    # be learned and r1 is not: all three are learned once the watermark
    # passes their time, in the order they were shown (a per-event learner
    # must not see the negatives of a burst first and its clicks after).
    j = TrainingJoiner(["click"], window_s=30, delayed_feedback="fake_negative", elapsed_s=3)
    out = j.push([imp("r0", 10, 0), imp("r1", 11, 1_000), imp("r2", 12, 2_000),
                  act("r0", 10, 1_500), act("r2", 12, 2_500), imp("r3", 13, 9_000)])
    assert [(e.request_id, e.label) for e in out] == [("r0", 1.0), ("r1", 0.0), ("r2", 1.0)]

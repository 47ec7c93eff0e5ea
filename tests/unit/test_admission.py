"""Admission control: first come first served, and nothing scored that cannot finish in time."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from streamrec.serving.admission import Admission, Shed


class Caller:
    """A request's context whose time to the deadline the test sets."""

    def __init__(self, remaining: float | None = 10.0) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def is_active(self) -> bool:
        return True

    def add_callback(self, callback: object) -> bool:
        return True


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def hold(admission: Admission, caller: Caller, release: threading.Event,
         log: list[object], name: str) -> threading.Thread:
    """A thread that takes a slot for ``caller`` (or is shed), logs it, holds it until ``release``."""
    def run() -> None:
        try:
            with admission.slot(caller):
                log.append(name)
                release.wait(10)
        except Shed as e:
            log.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_waiting_requests_get_the_slot_in_order_of_arrival() -> None:
    admission = Admission(slots=1, queue=8)
    release = [threading.Event() for _ in range(6)]
    log: list[object] = []
    threads = [hold(admission, Caller(), release[0], log, "first")]
    wait_until(lambda: log == ["first"])
    for i in range(1, 6):
        threads.append(hold(admission, Caller(), release[i], log, f"r{i}"))
        wait_until(lambda: admission.waiting == i)
    for i in range(6):
        release[i].set()
        if i < 5:
            wait_until(lambda: len(log) == i + 2)
    for t in threads:
        t.join(10)
    assert log == ["first", "r1", "r2", "r3", "r4", "r5"]


def test_a_request_that_can_no_longer_finish_in_time_is_shed_before_scoring() -> None:
    admission = Admission(slots=1, queue=4)
    admission.service_s = 0.5  # what scoring has been taking
    release = threading.Event()
    log: list[object] = []
    first = hold(admission, Caller(), release, log, "first")
    wait_until(lambda: log == ["first"])
    late = Caller(remaining=5.0)  # admitted to the queue: 0.5 + 0.5 s fits
    second = hold(admission, late, threading.Event(), log, "second")
    wait_until(lambda: admission.waiting == 1)
    late.remaining = 0.3  # the slot frees too late for it to finish
    release.set()
    first.join(10)
    second.join(10)
    assert len(log) == 2 and isinstance(log[1], Shed)
    assert (log[1].reason, log[1].code) == ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED)
    assert admission.running == 0 and admission.waiting == 0


def test_a_deadline_shorter_than_scoring_is_refused_on_an_idle_replica() -> None:
    admission = Admission(slots=2, queue=4)
    admission.service_s = 0.2
    with pytest.raises(Shed) as info:
        with admission.slot(Caller(remaining=0.1)):
            pass
    assert (info.value.reason, info.value.code) == ("deadline",
                                                    grpc.StatusCode.DEADLINE_EXCEEDED)
    with admission.slot(Caller(remaining=0.3)):
        assert admission.running == 1

"""The connection cap's bookkeeping: whom it drops to let a new connection in."""

from __future__ import annotations

import logging

import pytest

from signaling.connections import Admission, ConnectionGuard
from signaling.http_server import fit_to_open_files


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_below_the_cap_everyone_is_admitted() -> None:
    guard: ConnectionGuard[str] = ConnectionGuard(3, Clock())
    assert [guard.opened(c).admission for c in "abc"] == [Admission.ADMITTED] * 3
    assert guard.open == 3
    assert guard.waiting == 3


def test_at_the_cap_the_longest_waiting_connection_makes_room() -> None:
    guard: ConnectionGuard[str] = ConnectionGuard(3, Clock())
    for c in "abc":
        guard.opened(c)
    guard.request_started("a")  # a is inside a request: kept
    decision = guard.opened("d")
    assert decision.admission is Admission.ADMITTED_BY_EVICTION
    assert decision.evicted == "b"
    assert guard.opened("e").evicted == "c"
    assert guard.open == 3
    assert guard.evicted == 2


def test_a_finished_request_waits_again_at_the_back() -> None:
    guard: ConnectionGuard[str] = ConnectionGuard(3, Clock())
    for c in "abc":
        guard.opened(c)
    guard.request_started("a")
    guard.request_finished("a")  # keep-alive: a waits for its next request, newest
    assert guard.opened("d").evicted == "b"
    assert guard.opened("e").evicted == "c"
    assert guard.opened("f").evicted == "a"


def test_when_every_connection_is_inside_a_request_new_ones_are_refused() -> None:
    guard: ConnectionGuard[str] = ConnectionGuard(2, Clock())
    for c in "ab":
        guard.opened(c)
        guard.request_started(c)
    assert guard.opened("c").admission is Admission.REFUSED
    assert guard.open == 2
    guard.closed("c")  # the refused connection closing changes nothing
    assert guard.open == 2
    guard.closed("a")
    assert guard.opened("d").admission is Admission.ADMITTED


def test_closing_forgets_a_connection_once() -> None:
    guard: ConnectionGuard[str] = ConnectionGuard(2, Clock())
    guard.opened("a")
    victim = guard.opened("b") and guard.opened("c").evicted
    assert victim == "a"
    guard.closed("a")  # its connection_lost arrives after it was evicted
    guard.request_finished("a")  # and a late finish does not bring it back
    assert guard.open == 2
    assert guard.waiting == 2


def test_the_cap_is_reported_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard: ConnectionGuard[int] = ConnectionGuard(1, clock)
    with caplog.at_level(logging.WARNING, logger="signaling.connections"):
        for i in range(100):
            guard.opened(i)
        clock.now = 11.0
        guard.opened(100)
        clock.now = 12.0
        guard.opened(101)  # within the interval: not reported yet ...
        guard.closed(101)
        clock.now = 25.0
        guard.closed(100)  # ... but by the next close once the interval is over
        guard.closed(99)  # (and only once)
    lines = [r.getMessage() for r in caplog.records if r.name == "signaling.connections"]
    assert len(lines) == 3, lines
    assert "closed 1 connection" in lines[0]
    assert "closed 99 connection" in lines[1]
    assert "closed 1 connection" in lines[2]


def test_the_cap_leaves_open_files_for_everything_else() -> None:
    assert fit_to_open_files(1024, None, 10) == 1024  # no limit known
    assert fit_to_open_files(1024, 1_048_576, 10) == 1024
    assert fit_to_open_files(1024, 1024, 10) == 1024 - 128 - 160
    assert fit_to_open_files(1024, 256, 2) == 96
    assert fit_to_open_files(1024, 100, 10) == 8  # never below a handful

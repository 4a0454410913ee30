"""The fake clock the runtime tests rely on (tests/support/clock.py)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from realtime.clock import Clock
from tests.support.clock import FakeClock, Stuck


def test_it_implements_the_clock_protocol() -> None:
    for name in ("now", "sleep_until", "wait_until"):
        ours, theirs = getattr(FakeClock, name), getattr(Clock, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(theirs).parameters
        )
    clock: Clock = FakeClock(5.0)
    assert clock.now() == 5.0


async def test_time_moves_only_when_advanced_and_sleepers_wake_in_order() -> None:
    clock = FakeClock(10.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, at: float) -> None:
        await clock.sleep_until(at)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, at)) for n, at in (("b", 12.0), ("a", 11.0))]
    await clock.advance(0.5)
    assert woke == []
    await clock.advance_to(11.5)
    assert woke == [("a", 11.0)]
    await clock.advance(5)
    assert woke == [("a", 11.0), ("b", 12.0)]
    assert clock.now() == 16.5
    await asyncio.gather(*tasks)


async def test_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = FakeClock(10.0)
    await asyncio.wait_for(clock.sleep_until(9.0), 1)
    assert clock.sleeps == 0


async def test_wait_until_returns_true_when_the_event_is_set() -> None:
    clock = FakeClock(0.0)
    event = asyncio.Event()
    task = asyncio.create_task(clock.wait_until(event, 5.0))
    await clock.advance(1.0)
    assert not task.done()
    event.set()
    await clock.settle()
    assert task.done() and task.result() is True
    assert clock.pending == 0


async def test_wait_until_returns_false_at_the_deadline() -> None:
    clock = FakeClock(0.0)
    event = asyncio.Event()
    task = asyncio.create_task(clock.wait_until(event, 5.0))
    await clock.advance(4.99)
    assert not task.done()
    await clock.advance(0.01)
    assert task.done() and task.result() is False
    assert await clock.wait_until(event, 1.0) is False
    event.set()
    assert await clock.wait_until(event, 1.0) is True


async def test_run_jumps_to_each_deadline_and_detects_a_stuck_task() -> None:
    clock = FakeClock(0.0)

    async def work() -> float:
        for step in range(1, 4):
            await clock.sleep_until(step * 10.0)
        return clock.now()

    assert await clock.run(work()) == 30.0
    with pytest.raises(Stuck):
        await clock.run(asyncio.Event().wait())


async def test_oversleep_makes_every_wake_up_late() -> None:
    clock = FakeClock(0.0, oversleep=lambda: 0.002, autojump=True)
    await clock.sleep_until(1.0)
    assert clock.now() == pytest.approx(1.002)

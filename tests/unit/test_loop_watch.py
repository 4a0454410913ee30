"""The loop watch every async test runs under notices blocking work and names it."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.loop_watch import LoopWatch


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)


def _watched(hold_s: float) -> LoopWatch:
    async def run() -> LoopWatch:
        watch = LoopWatch(limit_s=0.1)
        watch.start()
        for _ in range(5):
            await asyncio.sleep(0.02)
        _hold_the_loop(hold_s)
        await asyncio.sleep(0.05)
        await watch.stop()
        return watch

    return asyncio.run(run())


def test_blocking_work_on_the_loop_fails_and_is_named() -> None:
    watch = _watched(0.4)
    assert 0.3 < watch.worst_s < 1.0
    with pytest.raises(AssertionError, match="held up for") as raised:
        watch.check()
    assert "_hold_the_loop" in str(raised.value)


def test_a_loop_that_keeps_turning_passes() -> None:
    watch = _watched(0.0)
    assert watch.worst_s < 0.1
    watch.check()


def test_an_excused_stall_does_not_count() -> None:
    async def run() -> LoopWatch:
        watch = LoopWatch(limit_s=0.1)
        watch.start()
        await asyncio.sleep(0.05)
        with watch.excused():
            _hold_the_loop(0.4)
        await asyncio.sleep(0.05)
        await watch.stop()
        return watch

    watch = asyncio.run(run())
    assert watch.worst_s < 0.1
    watch.check()


def test_a_loop_waiting_in_its_selector_is_not_held() -> None:
    """A stale beat while the loop thread waits in its selector (the loop just started again
    after pytest stopped it between teardowns) is not work holding the loop; a thread
    sleeping in our code is."""
    import selectors
    import socket
    import sys
    import threading

    from tests.support.loop_watch import _waiting_for_io

    left, right = socket.socketpair()
    selector = selectors.DefaultSelector()
    selector.register(left, selectors.EVENT_READ)
    waiter = threading.Thread(target=selector.select, args=(5.0,))
    sleeper = threading.Thread(target=_hold_the_loop, args=(0.5,))
    try:
        waiter.start()
        sleeper.start()
        time.sleep(0.2)
        frames = sys._current_frames()
        assert waiter.ident is not None and sleeper.ident is not None
        assert _waiting_for_io(frames[waiter.ident])
        assert not _waiting_for_io(frames[sleeper.ident])
    finally:
        right.send(b"x")
        waiter.join()
        sleeper.join()
        selector.close()
        left.close()
        right.close()

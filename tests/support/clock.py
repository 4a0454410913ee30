"""A deterministic virtual clock implementing :class:`realtime.clock.Clock` for tests.

Time never moves by itself.  A test moves it:

* ``await clock.advance(seconds)`` / ``await clock.advance_to(t)`` fire every pending timer up
  to the target one at a time, in deadline order, letting the woken tasks run (and schedule new
  timers) before going on, so several tasks interleave exactly as they would in real time.
* ``await clock.run(awaitable)`` is the auto-advancing variant: whenever the tasks are idle it
  jumps to the earliest pending deadline, until ``awaitable`` is done.  It raises
  :class:`Stuck` when nothing could ever wake the tasks again.
* ``FakeClock(autojump=True)`` is for code driven from the test's own task (one task, no
  helpers): ``sleep_until`` moves time to the deadline itself and returns, so thousands of
  sleeps cost almost nothing.

``oversleep`` (a callable returning seconds) makes every wake-up late by that much, like an
event loop that is busy, so schedules can be checked for drift.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

_SETTLE_YIELDS = 12
"""Event-loop passes granted to woken tasks before time moves on."""


class Stuck(RuntimeError):
    """Nothing is scheduled on the fake clock and the awaited work is not done."""


class FakeClock:
    def __init__(
        self,
        start: float = 1000.0,
        oversleep: Callable[[], float] | None = None,
        *,
        autojump: bool = False,
    ) -> None:
        self._now = start
        self._oversleep = oversleep
        self._autojump = autojump
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps = 0
        """How many times a task slept on this clock (deadline in the future)."""

    # ------------------------------------------------------------------ Clock protocol

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        self.sleeps += 1
        wake = deadline + (self._oversleep() if self._oversleep else 0.0)
        if self._autojump:
            self._now = wake
            await asyncio.sleep(0)
            return
        timer = self._schedule(wake)
        try:
            await timer
        finally:
            timer.cancel()

    async def wait_until(self, event: asyncio.Event, deadline: float) -> bool:
        if event.is_set():
            return True
        if deadline <= self._now:
            return False
        if self._autojump:
            await self.settle()
            if not event.is_set():
                self._now = deadline
            return event.is_set()
        timer = self._schedule(deadline)
        waiter: asyncio.Future[bool] = asyncio.ensure_future(event.wait())
        both: set[asyncio.Future[Any]] = {timer, waiter}
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        return event.is_set()

    # ------------------------------------------------------------------ moving time

    @property
    def pending(self) -> int:
        """Timers still waiting to fire."""
        return sum(1 for _, _, fut in self._timers if not fut.done())

    def next_deadline(self) -> float | None:
        self._prune()
        return self._timers[0][0] if self._timers else None

    async def settle(self) -> None:
        """Let every runnable task run until it waits again."""
        for _ in range(_SETTLE_YIELDS):
            await asyncio.sleep(0)

    async def advance_to(self, target: float) -> None:
        """Move time to ``target``, firing due timers in order."""
        await self.settle()
        while True:
            self._prune()
            if not self._timers or self._timers[0][0] > target:
                break
            deadline, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            timer.set_result(None)
            await self.settle()
        self._now = max(self._now, target)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self._now + seconds)

    async def run(self, work: Awaitable[T], limit: float | None = None) -> T:
        """Await ``work``, jumping to the next deadline whenever everything is idle.

        ``limit`` (seconds of fake time) guards against work that never ends.
        """
        task = asyncio.ensure_future(work)
        end = None if limit is None else self._now + limit
        try:
            while True:
                await self.settle()
                if task.done():
                    return task.result()
                deadline = self.next_deadline()
                if deadline is None:
                    raise Stuck("the work is waiting and nothing is scheduled on the clock")
                if end is not None and deadline > end:
                    raise Stuck(f"the work is not done after {limit} s of fake time")
                await self.advance_to(deadline)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _schedule(self, deadline: float) -> asyncio.Future[None]:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        return timer

    def _prune(self) -> None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)

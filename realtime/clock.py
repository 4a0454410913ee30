"""The monotonic clock the call runtime schedules against, injectable for tests."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return at or after ``deadline`` (immediately when it has passed)."""
        ...

    async def wait_until(self, event: asyncio.Event, deadline: float) -> bool:
        """Wait for ``event`` or ``deadline``; True when the event was set."""
        ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def wait_until(self, event: asyncio.Event, deadline: float) -> bool:
        if event.is_set():
            return True
        delay = deadline - self.now()
        if delay <= 0:
            return False
        try:
            async with asyncio.timeout(delay):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True

"""Watches a test's event loop for blocking work that holds it up.

The server, its calls and the test's own peers share the test's loop.  Work that holds the loop
(generating seconds of audio, say) starves every live call on it: packets stop and a call looks
vanished.  Every async test runs under a watch (tests/conftest.py) and fails when its loop was
held up longer than the limit at once, naming the code that held it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

BEAT_S = 0.01


class LoopWatch:
    """A heartbeat task on the loop and a thread that notices when the beat stops."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.worst_s = 0.0
        self.blocker = ""
        """The loop thread's stack, taken as soon as the longest hold passed the limit."""
        self._stall_beat = 0.0
        self._stall_stack = ""
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._observe, name="loop-watch", daemon=True)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._excused = 0

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._heartbeat(), name="loop-watch")
        self._thread.start()

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.join()

    @contextmanager
    def excused(self) -> Iterator[None]:
        """Stalls inside this block do not count: a server warming its engine up before any
        call exists (a model loader may hold the interpreter's lock while it loads)."""
        self._excused += 1
        try:
            yield
        finally:
            self._excused -= 1
            self._beat = time.monotonic()

    def check(self) -> None:
        if self.worst_s > self.limit_s:
            raise AssertionError(
                f"the event loop was held up for {self.worst_s * 1000:.0f} ms at once (limit "
                f"{self.limit_s * 1000:.0f} ms); do such work before the call or off the loop "
                f"(asyncio.to_thread). It was here:\n{self.blocker}"
            )

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(BEAT_S)

    def _observe(self) -> None:
        while not self._stopped.wait(self.limit_s / 4):
            if self._excused or self._loop is None or not self._loop.is_running():
                # Between a test and its fixtures' teardown pytest works with the loop
                # stopped (reporting a failure, say): that holds up nothing.  And an
                # excused stretch (see excused()) does not count.
                self._beat = time.monotonic()
                continue
            beat = self._beat
            held = time.monotonic() - beat - BEAT_S
            if held > self.limit_s and beat != self._stall_beat:
                # The first look at a new stall shows what holds the loop; later looks may
                # find it already past the blocker, waiting for the interpreter or a core.
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None and _waiting_for_io(frame):
                    # Nothing holds the loop: it has just started again (pytest stops it
                    # between async fixtures' teardowns, and this thread may not have
                    # looked while it was stopped) and its beat is due at once.
                    self._beat = time.monotonic()
                    continue
                self._stall_beat = beat
                self._stall_stack = "".join(traceback.format_stack(frame, limit=12))
            if held > self.worst_s:
                self.worst_s = held
                if held > self.limit_s:
                    self.blocker = self._stall_stack


def _waiting_for_io(frame: FrameType) -> bool:
    """The loop thread is in the selector's wait (for I/O or its next timer), running nothing."""
    return frame.f_code.co_filename.endswith("selectors.py") and frame.f_code.co_name in (
        "select",
        "poll",
    )

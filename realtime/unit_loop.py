"""The 1 Hz unit loop: cuts units on schedule and steps the engine with them.

Two tasks share a bounded hand-over:

* the ticker takes unit n as soon as the media stream has passed its end, or at its due time
  (``anchor + (n + 1) s``, plus a grace for late packets; no grace while the sender is quiet
  in DTX) when audio is missing.  The schedule
  is absolute: nothing accumulates from one unit to the next, so it cannot drift.
* the stepper hands each unit to the engine (on the engine's own thread, through ``step``) and
  passes the result on.

Overrun policy: while the engine is slower than real time, units wait in a queue of at most
``max_pending`` units.  When a new unit arrives at a full queue the oldest waiting unit is
dropped: the engine never hears it, the next ``unit`` event reports the count, and a warning
is logged.  The call keeps its clock; the lag never grows past ``max_pending`` units.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from omni.api import StepResult, Unit
from realtime.clock import Clock
from realtime.slicer import UnitSlicer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepTiming:
    wait_ms: float
    """From the unit's last sample arriving (or its deadline) to the step starting."""
    late_ms: float
    """How far behind its schedule the step started (due time to step start)."""
    step_ms: float
    dropped_units: int
    """Units dropped (overrun) since the previous step."""


class FramePicker(Protocol):
    """Hands the unit loop the video frames sampled during one unit."""

    def pick(self, index: int) -> Sequence[object]: ...


class NoFrames:
    def pick(self, index: int) -> Sequence[object]:
        return ()


StepFn = Callable[[Unit, Sequence[object]], Awaitable[StepResult]]
ResultFn = Callable[[Unit, StepResult, StepTiming], Awaitable[None]]
ErrorFn = Callable[[Unit, Exception], None]


class EngineFailing(RuntimeError):
    """The engine failed on several units in a row; the call should end."""


class UnitLoop:
    def __init__(
        self,
        slicer: UnitSlicer,
        clock: Clock,
        step: StepFn,
        on_result: ResultFn,
        on_error: ErrorFn,
        *,
        grace_ms: int,
        max_pending: int,
        frames: FramePicker | None = None,
        no_audio_s: float = 2.0,
        max_consecutive_errors: int = 3,
    ) -> None:
        self._slicer = slicer
        self._clock = clock
        self._step = step
        self._on_result = on_result
        self._on_error = on_error
        self._grace = grace_ms / 1000
        self._frames: FramePicker = frames or NoFrames()
        self._no_audio_s = no_audio_s
        self._max_errors = max_consecutive_errors
        self._pending: deque[tuple[Unit, Sequence[object], float]] = deque(maxlen=max_pending)
        self._has_pending = asyncio.Event()
        self._dropped_since_step = 0
        self.units = 0
        self.steps = 0
        self.dropped_units = 0
        self.errors = 0
        self.step_ms: deque[float] = deque(maxlen=600)
        self.wait_ms: deque[float] = deque(maxlen=600)
        self.late_ms: deque[float] = deque(maxlen=600)

    async def run_ticker(self) -> None:
        slicer, clock = self._slicer, self._clock
        if not await clock.wait_until(slicer.anchored, clock.now() + self._no_audio_s):
            slicer.start(clock.now())
            log.info("no inbound audio yet: units run on the wall clock")
        while True:
            index = slicer.next_index
            due = slicer.due_time(index)
            await clock.wait_until(slicer.reached, due)
            if not slicer.reached.is_set() and not slicer.quiet:
                # Packets may still be on their way; a sender in DTX sends none.
                await clock.wait_until(slicer.reached, due + self._grace)
            window_end = slicer.due_time(index)
            raw = self._frames.pick(index)
            unit = slicer.take()
            self.units += 1
            if len(self._pending) == self._pending.maxlen:
                lost = self._pending[0][0]
                self.dropped_units += 1
                self._dropped_since_step += 1
                log.warning(
                    "engine behind real time: unit %d dropped",
                    lost.index,
                    extra={"unit": lost.index, "pending": len(self._pending)},
                )
            self._pending.append((unit, raw, window_end))
            self._has_pending.set()

    async def run_stepper(self) -> None:
        consecutive_errors = 0
        while True:
            await self._has_pending.wait()
            unit, raw, due = self._pending.popleft()
            if not self._pending:
                self._has_pending.clear()
            start = self._clock.now()
            arrived = unit.captured_at or due + self._grace
            dropped, self._dropped_since_step = self._dropped_since_step, 0
            try:
                result = await self._step(unit, raw)
            except Exception as exc:
                self.errors += 1
                consecutive_errors += 1
                log.exception("engine step failed on unit %d", unit.index)
                self._dropped_since_step += dropped
                self._on_error(unit, exc)
                if consecutive_errors >= self._max_errors:
                    raise EngineFailing(
                        f"engine failed on {consecutive_errors} units in a row"
                    ) from exc
                continue
            consecutive_errors = 0
            end = self._clock.now()
            timing = StepTiming(
                wait_ms=max(0.0, (start - arrived) * 1000),
                late_ms=(start - due) * 1000,
                step_ms=(end - start) * 1000,
                dropped_units=dropped,
            )
            self.steps += 1
            self.step_ms.append(timing.step_ms)
            self.wait_ms.append(timing.wait_ms)
            self.late_ms.append(timing.late_ms)
            if timing.step_ms > 1000:
                log.warning(
                    "engine step took %.0f ms (unit is 1000 ms)",
                    timing.step_ms,
                    extra={"unit": unit.index, "step_ms": round(timing.step_ms)},
                )
            await self._on_result(unit, result, timing)

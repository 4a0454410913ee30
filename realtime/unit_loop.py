"""The 1 Hz unit loop: cuts units on schedule and steps the engine with them.

Two tasks share a bounded hand-over:

* the ticker takes unit n as soon as the media stream has passed its end, or at its due time
  (``anchor + (n + 1) s``, plus a grace for late packets; no grace while the sender is quiet
  in DTX) when audio is missing.  The schedule
  is absolute: nothing accumulates from one unit to the next, so it cannot drift.
* the stepper hands each unit to the engine and passes the result to the call's ``StepSink``.
  The loop owns the call's engine binding: ``run(binding)`` builds each ``Unit`` once, with its
  video frames converted, on the replica's own thread, and steps the session there.

Fault policy (what the call does when its engine misbehaves):

* a step that raises, or returns a result that breaks the contract (``check_result``), is
  reported (``StepSink.failed``: an ``error`` event) and the next unit goes on;
  ``max_consecutive_errors`` such steps in a row raise EngineFailing: the call ends with
  ``engine_error`` and ``broken`` asks for its replica to be rebuilt;
* a step still running after ``step_timeout_s`` raises EngineHung: the call ends at once with
  ``engine_timeout``, and ``broken`` tells the engine source that the replica's thread is
  stuck: the replica is rebuilt on a fresh thread and the stuck one is abandoned.

Sub-unit steps: while the person pauses, the call asks for early steps (``want_early``); an
engine whose session can (``EarlySession``) then hears the unit so far, at most once every
``early_every_ms`` of media, and may start speaking before the unit is complete.  Early steps
only run while no complete unit waits for the engine, and early and regular steps take turns
on one lock, so the session hears the stream in order.  They count toward the fault policy as
steps do.

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
from typing import Protocol, TypeVar

from omni.api import (
    INPUT_RATE,
    UNIT_SAMPLES,
    EarlySession,
    EngineBinding,
    Frame,
    PartialUnit,
    StepResult,
    Unit,
    check_result,
)
from realtime.clock import Clock
from realtime.errors import EngineFailing, EngineHung
from realtime.slicer import UnitAudio, UnitSlicer

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


class PendingFrame(Protocol):
    """A video frame picked for a unit, not yet converted for the engine."""

    def to_frame(self, max_side: int) -> Frame:
        """The engine's frame (RGB, long side at most ``max_side``); costly, so it runs on
        the replica's thread."""
        ...


class FramePicker(Protocol):
    """Hands the unit loop the video frames sampled during one unit."""

    def pick(self, index: int) -> Sequence[PendingFrame]: ...


class NoFrames:
    def pick(self, index: int) -> Sequence[PendingFrame]:
        return ()


class StepSink(Protocol):
    """Where the unit loop reports each step (the call's engine side)."""

    def stepping(self, index: int) -> None:
        """Unit ``index`` goes to the engine now."""
        ...

    async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
        """What the engine did with ``unit``; the next step waits for this to return."""
        ...

    def failed(self, index: int, exc: Exception) -> None:
        """The step of unit ``index`` raised ``exc``."""
        ...

    async def early(self, part: PartialUnit, result: StepResult) -> None:
        """What the engine did with the start of unit ``part.index`` (an early step, after
        ``stepping(part.index)``)."""
        ...


_T = TypeVar("_T")

Stepper = Callable[[UnitAudio, Sequence[PendingFrame]], Awaitable[tuple[Unit, StepResult]]]
"""Builds the unit from its audio and frames, and steps the engine with it."""


def on_replica(binding: EngineBinding) -> Stepper:
    """Steps ``binding``'s session on its replica's thread (never on the event loop)."""

    def work(audio: UnitAudio, frames: Sequence[PendingFrame]) -> tuple[Unit, StepResult]:
        unit = audio.with_frames(tuple(f.to_frame(binding.frame_side) for f in frames))
        return unit, binding.session.step(unit)

    async def step(audio: UnitAudio, frames: Sequence[PendingFrame]) -> tuple[Unit, StepResult]:
        return await asyncio.get_running_loop().run_in_executor(
            binding.executor, work, audio, frames
        )

    return step


class UnitLoop:
    def __init__(
        self,
        slicer: UnitSlicer,
        clock: Clock,
        sink: StepSink,
        *,
        grace_ms: int,
        max_pending: int,
        frames: FramePicker | None = None,
        no_audio_s: float = 2.0,
        max_consecutive_errors: int = 3,
        step_timeout_s: float = 15.0,
        early_every_ms: int = 0,
    ) -> None:
        self._slicer = slicer
        self._clock = clock
        self._sink = sink
        self._grace = grace_ms / 1000
        self._frames: FramePicker = frames or NoFrames()
        self._no_audio_s = no_audio_s
        self._max_errors = max_consecutive_errors
        self._step_timeout = step_timeout_s
        self._pending: deque[tuple[UnitAudio, Sequence[PendingFrame], float]] = deque(
            maxlen=max_pending
        )
        self._has_pending = asyncio.Event()
        self._dropped_since_step = 0
        self._early_every = early_every_ms * INPUT_RATE // 1000
        self._early_wanted = asyncio.Event()
        self._early_heard = (-1, 0)
        """(unit, samples of it) the engine last heard early."""
        self._engine_turn = asyncio.Lock()
        """Held by a step or an early step from start to delivered result."""
        self._consecutive_errors = 0
        self.binding: EngineBinding | None = None
        """The engine session the loop steps, once ``run`` has it."""
        self.broken: str | None = None
        """Why the session's replica must be rebuilt (it hung or kept failing); None if not."""
        self.hung = False
        """A step never returned: the replica's thread is stuck."""
        self.units = 0
        self.steps = 0
        self.dropped_units = 0
        self.errors = 0
        self.early_steps = 0
        self.step_ms: deque[float] = deque(maxlen=600)
        self.wait_ms: deque[float] = deque(maxlen=600)
        self.late_ms: deque[float] = deque(maxlen=600)

    async def run(self, binding: EngineBinding) -> None:
        """Cut units and step ``binding``'s session with them until cancelled; raises
        EngineFailing after ``max_consecutive_errors`` failed steps in a row."""
        self.binding = binding
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.run_ticker(), name="unit-ticker")
            tasks.create_task(self.run_stepper(on_replica(binding)), name="unit-stepper")
            session = binding.session
            if self._early_every and isinstance(session, EarlySession):
                tasks.create_task(self.run_early(binding, session), name="unit-early")

    def want_early(self) -> None:
        """The person is pausing: hear the unit so far, if the engine can (cheap; call it
        for every inbound frame of the pause)."""
        self._early_wanted.set()

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
            frames = self._frames.pick(index)
            audio = slicer.take()
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
            self._pending.append((audio, frames, window_end))
            self._has_pending.set()

    async def run_stepper(self, step: Stepper) -> None:
        while True:
            await self._has_pending.wait()
            async with self._engine_turn:
                await self._step_next(step)

    async def _step_next(self, step: Stepper) -> None:
        audio, frames, due = self._pending.popleft()
        if not self._pending:
            self._has_pending.clear()
        start = self._clock.now()
        arrived = audio.captured_at or due + self._grace
        dropped, self._dropped_since_step = self._dropped_since_step, 0
        self._sink.stepping(audio.index)
        try:
            unit, stepped = await self._bounded(step(audio, frames), audio.index)
            result = check_result(stepped)
        except Exception as exc:
            self._dropped_since_step += dropped
            self._step_failed(audio.index, exc)
            return
        self._consecutive_errors = 0
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
        await self._sink.result(unit, result, timing)

    def _step_failed(self, index: int, exc: Exception) -> None:
        """Apply the fault policy to a step (or early step) of unit ``index`` that failed."""
        self.errors += 1
        if isinstance(exc, EngineHung):
            self.hung = True
            self.broken = str(exc)
            log.error("%s", exc, extra={"unit": index})
            raise exc
        self._consecutive_errors += 1
        log.error("engine step failed on unit %d", index, exc_info=exc)
        self._sink.failed(index, exc)
        if self._consecutive_errors >= self._max_errors:
            self.broken = f"{self._consecutive_errors} failed steps in a row"
            raise EngineFailing(
                f"engine failed on {self._consecutive_errors} units in a row: {exc}"
            ) from exc

    async def run_early(self, binding: EngineBinding, session: EarlySession) -> None:
        """Early steps: the unit so far, whenever a pause asks for one and at least
        ``early_every_ms`` of new media has come since the last."""
        loop = asyncio.get_running_loop()
        while True:
            await self._early_wanted.wait()
            self._early_wanted.clear()
            if not self._early_due():
                continue
            async with self._engine_turn:
                part = self._slicer.peek()
                if part is None or self._pending or not self._early_due():
                    continue
                self._early_heard = (part.index, part.audio.size)
                self._sink.stepping(part.index)
                work = loop.run_in_executor(binding.executor, session.step_early, part)
                try:
                    result = check_result(await self._bounded(work, part.index))
                except Exception as exc:
                    self._step_failed(part.index, exc)
                    continue
                self._consecutive_errors = 0
                self.early_steps += 1
                await self._sink.early(part, result)

    def _early_due(self) -> bool:
        if self._pending:
            return False
        index = self._slicer.next_index
        heard = self._early_heard[1] if self._early_heard[0] == index else 0
        return self._slicer.position - index * UNIT_SAMPLES >= heard + self._early_every

    async def _bounded(self, work: Awaitable[_T], index: int) -> _T:
        """``work``'s result, or EngineHung once it has run ``step_timeout_s`` (the thread it
        runs on cannot be stopped: it is left to finish, or not, on its own)."""
        task = asyncio.ensure_future(work)
        finished = asyncio.Event()
        task.add_done_callback(lambda _: finished.set())
        try:
            deadline = self._clock.now() + self._step_timeout
            if not await self._clock.wait_until(finished, deadline):
                raise EngineHung(
                    f"the engine's step of unit {index} ran past {self._step_timeout:g} s"
                )
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

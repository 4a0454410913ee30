"""Sub-unit early steps: the unit loop hands an EarlySession the unit so far while the
person pauses, in order with the unit's own step, at most once per ``early_every_ms``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import numpy as np
import pytest

from omni.api import (
    OUTPUT_RATE,
    UNIT_SAMPLES,
    EarlySession,
    EngineBinding,
    PartialUnit,
    StepResult,
    Unit,
)
from realtime.errors import EngineFailing
from realtime.slicer import UnitSlicer
from realtime.unit_loop import StepTiming, UnitLoop
from tests.support.clock import FakeClock

T0 = 1000.0
CHUNK = 320  # 20 ms at 16 kHz
R = TypeVar("R")


class InlineExecutor(Executor):
    """Runs the work at once on the caller's thread, so the fake clock alone orders events
    (the replica thread itself is covered in test_unit_loop)."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class Session:
    """Records what it hears, in order: ("early", index, samples) and ("step", index)."""

    def __init__(self, speak_at: int | None = None, fail_early: bool = False) -> None:
        self.heard: list[tuple[str, int, int]] = []
        self.speak_at = speak_at
        self.fail_early = fail_early

    def step(self, unit: Unit) -> StepResult:
        self.heard.append(("step", unit.index, unit.audio.size))
        return StepResult(listen=True)

    def step_early(self, part: PartialUnit) -> StepResult:
        self.heard.append(("early", part.index, part.audio.size))
        if self.fail_early:
            raise RuntimeError("early step broke")
        if self.speak_at is not None and part.audio.size >= self.speak_at:
            self.speak_at = None
            speech = np.full(OUTPUT_RATE // 2, 0.1, np.float32)
            return StepResult(listen=False, text="Hi.", audio=speech, heard="hello")
        return StepResult(listen=True)

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        return None


class WholeUnitsOnly:
    def step(self, unit: Unit) -> StepResult:
        return StepResult(listen=True)

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        return None


class Sink:
    def __init__(self) -> None:
        self.early_results: list[tuple[PartialUnit, StepResult]] = []
        self.results: list[int] = []
        self.failures: list[tuple[int, Exception]] = []

    def stepping(self, index: int) -> None:
        return None

    async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
        self.results.append(unit.index)

    def failed(self, index: int, exc: Exception) -> None:
        self.failures.append((index, exc))

    async def early(self, part: PartialUnit, result: StepResult) -> None:
        self.early_results.append((part, result))


@pytest.fixture
def executor() -> Iterator[InlineExecutor]:
    pool = InlineExecutor()
    yield pool
    pool.shutdown()


async def _talk(
    clock: FakeClock, slicer: UnitSlicer, loop: UnitLoop, seconds: float, poke_from: float
) -> None:
    """Real-time audio; after each chunk past media time ``poke_from`` (s), the call's VAD
    asks for an early step (as a pause would)."""
    fed = slicer.position
    for _ in range(round(seconds * 50)):
        fed += CHUNK
        await clock.advance_to(T0 + fed / 16_000)
        slicer.append(np.full(CHUNK, fed, np.float32), clock.now())
        if fed / 16_000 > poke_from:
            loop.want_early()
        await clock.settle()


async def test_a_pause_gives_early_steps_of_the_open_unit_in_order(
    executor: InlineExecutor,
) -> None:
    clock, slicer, sink, session = FakeClock(T0), UnitSlicer(), Sink(), Session()
    assert isinstance(session, EarlySession)
    loop = UnitLoop(slicer, clock, sink, grace_ms=150, max_pending=2, early_every_ms=100)
    task = asyncio.create_task(loop.run(EngineBinding("t", session, executor)))
    try:
        # Unit 0 is all talk; the pause starts at 1.4 s, inside unit 1.
        await _talk(clock, slicer, loop, 2.5, poke_from=1.4)
        await clock.advance(0.3)
        await clock.settle()
        early = [(i, n) for kind, i, n in session.heard if kind == "early"]
        assert early, "the pause brought no early step"
        assert {i for i, _ in early} == {1, 2}
        sizes = [n for i, n in early if i == 1]
        assert sizes[0] >= 0.4 * UNIT_SAMPLES
        assert all(b - a >= 0.1 * UNIT_SAMPLES for a, b in itertools.pairwise(sizes))
        assert 5 <= len(sizes) <= 7, sizes  # 1.4..2.0 s, one per 100 ms of media
        # Every early step of a unit comes before the unit's own step.
        order = [(kind, i) for kind, i, _ in session.heard]
        assert order.index(("step", 1)) > max(
            k for k, (kind, i) in enumerate(order) if kind == "early" and i == 1
        )
        assert ("step", 0) in order and order.index(("step", 0)) < order.index(("early", 1))
        assert sink.results[:2] == [0, 1]
        assert loop.early_steps == len(early)
        assert not sink.failures
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_speech_from_an_early_step_reaches_the_sink_at_once(
    executor: InlineExecutor,
) -> None:
    clock, slicer, sink = FakeClock(T0), UnitSlicer(), Sink()
    session = Session(speak_at=UNIT_SAMPLES // 2)
    loop = UnitLoop(slicer, clock, sink, grace_ms=150, max_pending=2, early_every_ms=40)
    task = asyncio.create_task(loop.run(EngineBinding("t", session, executor)))
    try:
        await _talk(clock, slicer, loop, 1.7, poke_from=1.2)
        spoke = [(p, r) for p, r in sink.early_results if not r.listen]
        assert len(spoke) == 1
        part, result = spoke[0]
        assert part.index == 1 and part.audio.size >= UNIT_SAMPLES // 2
        assert part.audio.size < 0.6 * UNIT_SAMPLES, "delivered within 100 ms of being due"
        assert result.heard == "hello" and result.audio is not None
        # The prefix is the stream itself: unit 1's first samples, in order.
        np.testing.assert_array_equal(part.audio[:3], [UNIT_SAMPLES + CHUNK] * 3)
        assert 1 not in sink.results, "unit 1 is not complete yet"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_no_early_steps_without_a_pause_or_for_whole_unit_engines(
    executor: InlineExecutor,
) -> None:
    clock, slicer, sink, session = FakeClock(T0), UnitSlicer(), Sink(), Session()
    loop = UnitLoop(slicer, clock, sink, grace_ms=150, max_pending=2, early_every_ms=40)
    task = asyncio.create_task(loop.run(EngineBinding("t", session, executor)))
    try:
        await _talk(clock, slicer, loop, 2.5, poke_from=99)
        assert [k for k, *_ in session.heard] == ["step", "step"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    clock, slicer, sink = FakeClock(T0), UnitSlicer(), Sink()
    loop = UnitLoop(slicer, clock, sink, grace_ms=150, max_pending=2, early_every_ms=40)
    task = asyncio.create_task(loop.run(EngineBinding("t", WholeUnitsOnly(), executor)))
    try:
        await _talk(clock, slicer, loop, 2.5, poke_from=0.0)
        assert sink.results == [0, 1] and not sink.early_results
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_failing_early_steps_count_toward_the_fault_policy(
    executor: InlineExecutor,
) -> None:
    clock, slicer, sink = FakeClock(T0), UnitSlicer(), Sink()
    session = Session(fail_early=True)
    loop = UnitLoop(
        slicer,
        clock,
        sink,
        grace_ms=150,
        max_pending=2,
        early_every_ms=40,
        max_consecutive_errors=3,
    )
    task = asyncio.create_task(loop.run(EngineBinding("t", session, executor)))
    try:
        await _talk(clock, slicer, loop, 0.6, poke_from=0.0)
        await clock.settle()
        assert task.done()
        with pytest.raises(ExceptionGroup) as raised:
            task.result()
        assert raised.group_contains(EngineFailing)
        assert len(sink.failures) == 3
        assert loop.broken == "3 failed steps in a row"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""UnitLoop on a fake clock: 1 Hz units, deadlines, overrun policy, timings, engine errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from omni.api import UNIT_SAMPLES, EngineBinding, Frame, StepResult, Unit
from realtime.errors import EngineFailing, EngineHung
from realtime.slicer import UnitAudio, UnitSlicer
from realtime.unit_loop import PendingFrame, StepTiming, UnitLoop
from tests.support.clock import FakeClock

T0 = 1000.0
CHUNK = 320  # 20 ms at 16 kHz


class EngineBroke(RuntimeError):
    pass


@dataclass
class Harness:
    """A unit loop on a fake clock with a scripted engine."""

    step_s: Callable[[int], float] = lambda index: 0.0
    fails: Callable[[int], bool] = lambda index: False
    hangs: Callable[[int], bool] = lambda index: False
    malformed: Callable[[int], bool] = lambda index: False
    step_timeout_s: float = 15.0
    grace_ms: int = 150
    max_pending: int = 2
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    slicer: UnitSlicer = field(default_factory=UnitSlicer)
    started: list[tuple[int, float, Unit, Sequence[PendingFrame]]] = field(default_factory=list)
    results: list[tuple[Unit, StepResult, StepTiming]] = field(default_factory=list)
    errors: list[tuple[int, Exception]] = field(default_factory=list)
    stepping_seen: list[int] = field(default_factory=list)
    fed: int = 0

    def __post_init__(self) -> None:
        self.loop = UnitLoop(
            self.slicer,
            self.clock,
            self,
            grace_ms=self.grace_ms,
            max_pending=self.max_pending,
            step_timeout_s=self.step_timeout_s,
        )
        self.ticker = asyncio.create_task(self.loop.run_ticker())
        self.stepper = asyncio.create_task(self.loop.run_stepper(self._step))

    async def _step(
        self, audio: UnitAudio, frames: Sequence[PendingFrame]
    ) -> tuple[Unit, StepResult]:
        unit = audio.with_frames(())
        self.started.append((unit.index, self.clock.now(), unit, frames))
        await self.clock.sleep_until(self.clock.now() + self.step_s(unit.index))
        if self.fails(unit.index):
            raise EngineBroke(f"unit {unit.index}")
        if self.hangs(unit.index):
            await asyncio.Event().wait()
        if self.malformed(unit.index):
            bad = np.full(100, np.nan, dtype=np.float32)
            return unit, StepResult(listen=False, text="x", audio=bad)
        return unit, StepResult(listen=True, text=f"u{unit.index}")

    # StepSink
    def stepping(self, index: int) -> None:
        self.stepping_seen.append(index)

    async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
        self.results.append((unit, result, timing))

    def failed(self, index: int, exc: Exception) -> None:
        self.errors.append((index, exc))

    async def feed(self, seconds: float, start: float = T0, delay: float = 0.0) -> None:
        """Real-time audio: the chunk ending at media time m arrives at start + m + delay."""
        for _ in range(round(seconds * 50)):
            samples = np.arange(self.fed, self.fed + CHUNK, dtype=np.float32)
            self.fed += CHUNK
            await self.clock.advance_to(start + self.fed / 16_000 + delay)
            self.slicer.append(samples, self.clock.now())
        await self.clock.settle()

    @property
    def indices(self) -> list[int]:
        return [index for index, *_ in self.started]

    def start_times(self) -> list[float]:
        return [at for _, at, *_ in self.started]

    async def stop(self) -> None:
        for task in (self.ticker, self.stepper):
            task.cancel()
        await asyncio.gather(self.ticker, self.stepper, return_exceptions=True)


async def test_units_go_to_the_engine_in_order_at_1_hz() -> None:
    h = Harness()
    try:
        await h.feed(5.5)
        assert h.indices == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(h.start_times(), [T0 + n + 1 for n in range(5)], atol=1e-9)
        for n, (_, _, unit, _) in enumerate(h.started):
            assert unit.missing_ms == 0
            np.testing.assert_array_equal(
                unit.audio, np.arange(n * UNIT_SAMPLES, (n + 1) * UNIT_SAMPLES, dtype=np.float32)
            )
        assert [r.text for _, r, _ in h.results] == [f"u{n}" for n in range(5)]
        assert (h.loop.units, h.loop.steps, h.loop.dropped_units) == (5, 5, 0)
        for _, _, timing in h.results:
            assert timing.wait_ms == pytest.approx(0, abs=1e-6)
            assert timing.late_ms == pytest.approx(0, abs=1e-6)
            assert timing.dropped_units == 0
    finally:
        await h.stop()


async def test_units_keep_coming_with_silence_when_audio_stops() -> None:
    h = Harness()
    try:
        await h.feed(2.5)
        await h.clock.advance_to(T0 + 5.5)
        assert h.indices == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(
            h.start_times(), [T0 + 1, T0 + 2, T0 + 3.15, T0 + 4.15, T0 + 5.15], atol=1e-9
        )
        units = [unit for _, _, unit, _ in h.started]
        assert [u.missing_ms for u in units] == [0, 0, 500, 1000, 1000]
        assert not units[3].audio.any()
        assert [u.audio.size for u in units] == [UNIT_SAMPLES] * 5
        timings = [t for *_, t in h.results]
        assert timings[2].late_ms == pytest.approx(150)
        assert timings[2].wait_ms == pytest.approx(0, abs=1e-6), "measured from the deadline"
    finally:
        await h.stop()


async def test_audio_resuming_after_a_gap_lines_up_with_the_clock() -> None:
    h = Harness()
    try:
        await h.feed(1.0)
        await h.clock.advance_to(T0 + 2.5)  # unit 1 was taken silent at its deadline
        # Packets resume at media time 3 s; the inbound converter turns the 2 s pts gap
        # into silence in front of the first new chunk.
        gap = np.zeros(2 * UNIT_SAMPLES, dtype=np.float32)
        first = np.arange(3 * UNIT_SAMPLES, 3 * UNIT_SAMPLES + CHUNK, dtype=np.float32)
        await h.clock.advance_to(T0 + 3.02)
        h.slicer.append(np.concatenate([gap, first]), h.clock.now())
        h.fed = 3 * UNIT_SAMPLES + CHUNK
        await h.feed(2.0)
        assert h.indices == [0, 1, 2, 3, 4]
        assert [u.missing_ms for _, _, u, _ in h.started] == [0, 1000, 0, 0, 0]
        assert h.slicer.late_samples == UNIT_SAMPLES
        np.testing.assert_array_equal(
            h.started[3][2].audio,
            np.arange(3 * UNIT_SAMPLES, 4 * UNIT_SAMPLES, dtype=np.float32),
        )
        np.testing.assert_allclose(h.start_times()[3:], [T0 + 4, T0 + 5], atol=1e-9)
    finally:
        await h.stop()


async def test_without_any_audio_units_run_on_the_wall_clock() -> None:
    h = Harness()
    try:
        await h.clock.advance_to(T0 + 1.9)
        assert not h.slicer.started
        await h.clock.advance_to(T0 + 6.5)
        assert h.slicer.started
        # Anchored at T0 + 2 (no_audio_s); unit n is due at T0 + 2 + n + 1, plus grace.
        assert h.indices == [0, 1, 2, 3]
        np.testing.assert_allclose(
            h.start_times(), [T0 + 3.15, T0 + 4.15, T0 + 5.15, T0 + 6.15], atol=1e-9
        )
        assert all(u.missing_ms == 1000 and not u.audio.any() for _, _, u, _ in h.started)
    finally:
        await h.stop()


async def test_the_schedule_does_not_drift_over_many_units() -> None:
    h = Harness(step_s=lambda index: 0.37)
    try:
        await h.clock.advance_to(T0 + 2 + 300.5)
        assert h.indices == list(range(300))
        expected = [T0 + 2 + n + 1 + 0.15 for n in range(300)]
        np.testing.assert_allclose(h.start_times(), expected, atol=1e-6)
    finally:
        await h.stop()


async def test_first_audio_within_the_wait_anchors_the_clock() -> None:
    h = Harness()
    try:
        await h.clock.advance_to(T0 + 1.2)
        await h.feed(2.0, start=T0 + 1.2)
        assert h.indices == [0, 1]
        np.testing.assert_allclose(h.start_times(), [T0 + 2.2, T0 + 3.2], atol=1e-9)
    finally:
        await h.stop()


async def test_waiting_and_lateness_are_measured() -> None:
    # Unit 0's step takes 1.4 s, so unit 1 (complete at T0 + 2) waits 400 ms.
    h = Harness(step_s=lambda index: 1.4 if index == 0 else 0.1)
    try:
        await h.feed(3.5)
        timings = [t for *_, t in h.results]
        assert timings[0].step_ms == pytest.approx(1400)
        assert timings[1].wait_ms == pytest.approx(400)
        assert timings[1].late_ms == pytest.approx(400)
        assert timings[1].step_ms == pytest.approx(100)
        assert timings[2].wait_ms == pytest.approx(0, abs=1e-6)
        assert list(h.loop.step_ms)[:2] == pytest.approx([1400, 100])
        assert list(h.loop.wait_ms)[1] == pytest.approx(400)
    finally:
        await h.stop()


async def test_late_packets_show_as_lateness_not_as_waiting() -> None:
    h = Harness()
    try:
        await h.feed(1.0)
        await h.feed(1.0, delay=0.06)  # unit 1's audio arrives 60 ms behind the anchor
        await h.clock.advance(0.01)
        timings = [t for *_, t in h.results]
        assert len(timings) == 2
        assert timings[1].late_ms == pytest.approx(60, abs=1e-6)
        assert timings[1].wait_ms == pytest.approx(0, abs=1e-6)
        assert h.started[1][2].captured_at == pytest.approx(T0 + 2.06)
    finally:
        await h.stop()


async def test_overrun_keeps_a_bounded_queue_and_drops_the_oldest_unit() -> None:
    h = Harness(step_s=lambda index: 2.5, max_pending=2)
    try:
        await h.feed(10.0)
        # Unit n is complete at t = n + 1.  t=1 step 0 until 3.5; t=3.5 step 1 until 6;
        # t=5 unit 4 meets a full queue [2, 3]: unit 2 is dropped; t=6 step 3 until 8.5,
        # queue [4, 5]; t=7 drop 4; t=8 drop 5; t=8.5 step 6; t=10 drop 7.
        assert h.indices == [0, 1, 3, 6]
        assert h.loop.units == 10
        assert h.loop.dropped_units == 4
        reported = [t.dropped_units for *_, t in h.results]
        assert reported == [0, 0, 1], "each drop is reported with the next step"
        assert h.results[2][2].late_ms == pytest.approx(2000)
        # The lag stays bounded: the step of unit n never starts later than
        # (max_pending + 1) units after it was due.
        for index, at, *_ in h.started:
            assert at - (T0 + index + 1) <= 3.0
    finally:
        await h.stop()


async def test_overrun_drops_are_all_reported_eventually() -> None:
    h = Harness(step_s=lambda index: 1.7 if index < 8 else 0.0, max_pending=1)
    try:
        await h.feed(14.0)
        assert h.loop.dropped_units > 0
        assert sum(t.dropped_units for *_, t in h.results) == h.loop.dropped_units
        assert h.indices == sorted(h.indices), "units reach the engine in order"
    finally:
        await h.stop()


async def test_engine_errors_are_reported_and_the_loop_goes_on() -> None:
    h = Harness(fails=lambda index: index in (1, 3))
    try:
        await h.feed(5.5)
        assert [index for index, _ in h.errors] == [1, 3]
        assert all(isinstance(e, EngineBroke) for _, e in h.errors)
        assert [u.index for u, *_ in h.results] == [0, 2, 4]
        assert h.loop.errors == 2
        assert not h.stepper.done()
    finally:
        await h.stop()


async def test_three_consecutive_engine_failures_end_the_stepper() -> None:
    h = Harness(fails=lambda index: index >= 2)
    try:
        await h.feed(4.5)
        assert not h.stepper.done()
        await h.feed(1.0)
        assert h.stepper.done()
        with pytest.raises(EngineFailing) as failing:
            h.stepper.result()
        assert isinstance(failing.value.__cause__, EngineBroke)
        assert [index for index, _ in h.errors] == [2, 3, 4]
        assert [u.index for u, *_ in h.results] == [0, 1]
    finally:
        await h.stop()


async def test_a_success_resets_the_consecutive_failure_count() -> None:
    h = Harness(fails=lambda index: index % 3 != 0)  # 2 failures, 1 success, ...
    try:
        await h.feed(9.5)
        assert not h.stepper.done()
        assert h.loop.errors == 6
    finally:
        await h.stop()


async def test_drops_are_reported_even_when_the_next_step_fails() -> None:
    h = Harness(
        step_s=lambda index: 2.5 if index < 2 else 0.0,
        fails=lambda index: index == 3,
        max_pending=2,
    )
    try:
        await h.feed(8.0)
        assert h.loop.dropped_units == 1
        assert [index for index, _ in h.errors] == [3]
        assert sum(t.dropped_units for *_, t in h.results) == h.loop.dropped_units
    finally:
        await h.stop()


async def test_run_builds_each_unit_once_with_its_frames_and_steps_on_the_replica_thread() -> None:
    picked: list[int] = []
    converted_on: list[str] = []
    sides: list[int] = []
    stepped: list[tuple[Unit, str]] = []
    results: list[Unit] = []
    marks: list[int] = []

    class Pending:
        def __init__(self, index: int) -> None:
            self.index = index

        def to_frame(self, max_side: int) -> Frame:
            sides.append(max_side)
            converted_on.append(threading.current_thread().name)
            return Frame(rgb=np.full((4, 6, 3), self.index, np.uint8), offset_ms=500)

    class Picker:
        def pick(self, index: int) -> Sequence[PendingFrame]:
            picked.append(index)
            return (Pending(index),)

    class Session:
        def step(self, unit: Unit) -> StepResult:
            stepped.append((unit, threading.current_thread().name))
            return StepResult(listen=True)

        def interrupt(self) -> None:
            return None

        def close(self) -> None:
            return None

    class Sink:
        def stepping(self, index: int) -> None:
            marks.append(index)

        async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
            results.append(unit)

        def failed(self, index: int, exc: Exception) -> None:
            raise AssertionError(f"unit {index} failed: {exc}")

    clock = FakeClock(T0)
    slicer = UnitSlicer()
    loop = UnitLoop(slicer, clock, Sink(), grace_ms=150, max_pending=4, frames=Picker())
    executor = ThreadPoolExecutor(1, thread_name_prefix="replica-test")
    binding = EngineBinding("test", Session(), executor, frame_side=1280)
    task = asyncio.create_task(loop.run(binding))
    try:
        slicer.start(clock.now())
        await clock.advance(3.5)
        async with asyncio.timeout(10):
            while len(results) < 3:
                await asyncio.sleep(0.005)
        assert loop.binding is binding
        assert picked == [0, 1, 2] and marks == [0, 1, 2]
        assert sides == [1280] * 3, "frames are converted at the engine's frame side"
        assert all(name.startswith("replica-test") for name in converted_on), converted_on
        assert all(name.startswith("replica-test") for _, name in stepped), stepped
        # One Unit per step: the engine and the result sink see the same object.
        assert [id(u) for u, _ in stepped] == [id(u) for u in results]
        assert [(u.index, u.start_ms, int(u.frames[0].rgb[0, 0, 0])) for u in results] == [
            (0, 0, 0),
            (1, 1000, 1),
            (2, 2000, 2),
        ]
        assert all(u.frames[0].offset_ms == 500 and u.audio.size == UNIT_SAMPLES for u in results)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        executor.shutdown(wait=True)


async def test_a_unit_that_ends_in_dtx_is_taken_at_its_due_time_without_grace() -> None:
    h = Harness()
    try:
        await h.feed(1.0)
        # Unit 1: 600 ms of audio, the last packet a DTX frame; then the sender sends nothing.
        for _ in range(30):
            samples = np.arange(h.fed, h.fed + CHUNK, dtype=np.float32)
            h.fed += CHUNK
            await h.clock.advance_to(T0 + h.fed / 16_000)
            h.slicer.append(samples, h.clock.now(), quiet=h.fed == 16_000 + 30 * CHUNK)
        await h.clock.advance_to(T0 + 3.5)
        assert h.indices[:3] == [0, 1, 2]
        np.testing.assert_allclose(h.start_times()[1:3], [T0 + 2.0, T0 + 3.0], atol=1e-9)
        assert [u.missing_ms for _, _, u, _ in h.started[:3]] == [0, 0, 0]
    finally:
        await h.stop()


async def test_a_step_past_its_deadline_ends_the_loop_as_hung() -> None:
    h = Harness(hangs=lambda index: index == 2, step_timeout_s=5.0)
    try:
        await h.feed(3.5)
        assert not h.stepper.done()
        await h.clock.advance_to(T0 + 3 + 4.9)
        assert not h.stepper.done(), "not before its deadline"
        await h.clock.advance_to(T0 + 3 + 5.01)
        await h.clock.settle()
        assert h.stepper.done()
        with pytest.raises(EngineHung, match="unit 2 ran past 5 s"):
            h.stepper.result()
        assert h.loop.hung and h.loop.broken is not None
        assert [u.index for u, *_ in h.results] == [0, 1]
    finally:
        await h.stop()


async def test_malformed_results_count_as_failed_steps_and_ask_for_a_rebuild() -> None:
    h = Harness(malformed=lambda index: index >= 1)
    try:
        await h.feed(3.5)
        assert [index for index, _ in h.errors] == [1, 2]
        assert all("NaN" in str(exc) for _, exc in h.errors)
        assert not h.stepper.done() and h.loop.broken is None
        await h.feed(1.0)
        with pytest.raises(EngineFailing):
            h.stepper.result()
        assert h.loop.broken == "3 failed steps in a row" and not h.loop.hung
    finally:
        await h.stop()

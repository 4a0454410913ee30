"""OutboundPacer on a fake clock: absolute 20 ms schedule, silence, stalls, pts."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from realtime.outbound import FRAME_MS, OutboundPacer, OutFrame
from realtime.playout import PlayoutBuffer
from tests.support.clock import FakeClock

RATE = 48_000
FRAME = RATE * FRAME_MS // 1000  # 960
T0 = 1000.0


def marked(k: int) -> np.ndarray:
    """One 20 ms frame whose every sample says which frame it is (k + 1, never 0)."""
    return np.full(FRAME, k + 1, dtype=np.int16)


async def fill(playout: PlayoutBuffer, frames: range) -> None:
    for k in frames:
        assert await playout.push(marked(k))


async def test_frames_are_due_every_20_ms_from_an_absolute_start() -> None:
    clock = FakeClock(T0, autojump=True)
    pacer = OutboundPacer(PlayoutBuffer(RATE, 1000), clock, max_lag_ms=80)
    times = []
    for _ in range(50):
        await pacer.next_frame()
        times.append(clock.now())
    assert times[0] == T0, "the first frame goes out at once"
    np.testing.assert_allclose(np.diff(times), FRAME_MS / 1000, atol=1e-9)
    assert pacer.frames == 50
    assert pacer.skipped_frames == 0


async def test_no_drift_over_10000_frames_with_late_wake_ups() -> None:
    rng = random.Random(5)
    clock = FakeClock(T0, oversleep=lambda: rng.uniform(0.001, 0.003), autojump=True)
    pacer = OutboundPacer(PlayoutBuffer(RATE, 1000), clock, max_lag_ms=80)
    late = []
    for k in range(10_000):
        frame = await pacer.next_frame()
        assert frame.pts == k * FRAME
        late.append(clock.now() - (T0 + k * FRAME_MS / 1000))
    assert clock.sleeps >= 9_999, "it must sleep to its deadline, not spin"
    assert min(late) >= 0
    assert max(late) <= 0.003 + 1e-9, "lateness must not accumulate"
    assert late[-1] <= 0.003 + 1e-9
    assert pacer.skipped_frames == 0
    assert np.mean(pacer.lateness_ms) == pytest.approx(2.0, abs=0.3)
    assert len(pacer.lateness_ms) == 500, "only recent lateness is kept"


async def test_silence_when_playout_is_empty() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 1000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    frame = await pacer.next_frame()
    assert frame.speech is False
    assert frame.samples.dtype == np.int16
    assert frame.samples.shape == (FRAME,)
    assert not frame.samples.any()
    await fill(playout, range(2))
    speech = [await pacer.next_frame() for _ in range(3)]
    assert [f.speech for f in speech] == [True, True, False]
    np.testing.assert_array_equal(speech[0].samples, marked(0))
    np.testing.assert_array_equal(speech[1].samples, marked(1))
    assert playout.played == 2 * FRAME


async def test_last_partial_frame_is_zero_padded_speech() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 1000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    await playout.push(np.full(FRAME + 100, 9, dtype=np.int16))
    await pacer.next_frame()
    frame = await pacer.next_frame()
    assert frame.speech is True
    assert (frame.samples[:100] == 9).all()
    assert not frame.samples[100:].any()


async def test_pts_advances_by_960_per_frame() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 1000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    await fill(playout, range(5))
    pts = [(await pacer.next_frame()).pts for _ in range(10)]
    assert pts == [k * 960 for k in range(10)]


async def test_a_stall_longer_than_max_lag_skips_ahead_and_drops_stale_audio() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 4000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    await fill(playout, range(100))
    for k in range(10):
        assert (await pacer.next_frame()).samples[0] == k + 1
    # The sender stalls: frame 10 (due at +200 ms) is asked for at +690 ms, 490 ms late.
    await clock.advance(0.51)
    frame = await pacer.next_frame()
    assert pacer.skipped_frames == 24
    assert playout.dropped == 24 * FRAME
    assert frame.pts == 34 * FRAME, "pts keeps following the wall clock"
    assert frame.samples[0] == 34 + 1, "the audio that should have played meanwhile is gone"
    assert pacer.lateness_ms[-1] == pytest.approx(10, abs=1e-6)
    # Then the schedule goes on from there, on time.
    nxt = await pacer.next_frame()
    assert nxt.pts == 35 * FRAME
    assert clock.now() == pytest.approx(T0 + 0.7)
    assert nxt.samples[0] == 35 + 1


async def test_a_stall_of_a_whole_number_of_frames_lands_exactly_on_schedule() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 4000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    await fill(playout, range(100))
    for _ in range(10):
        await pacer.next_frame()
    await clock.advance(0.5)  # frame 10 (due at +200 ms) is asked for at +680 ms
    frame = await pacer.next_frame()
    assert pacer.skipped_frames == 24
    assert frame.pts == 34 * FRAME
    assert pacer.lateness_ms[-1] == pytest.approx(0, abs=1e-6)


async def test_a_stall_just_past_max_lag_skips_whole_frames_only() -> None:
    clock = FakeClock(T0, autojump=True)
    pacer = OutboundPacer(PlayoutBuffer(RATE, 1000), clock, max_lag_ms=80)
    await pacer.next_frame()
    await clock.advance(0.02 + 0.09)  # frame 1 is 90 ms late
    frame = await pacer.next_frame()
    assert pacer.skipped_frames == 4
    assert frame.pts == 5 * FRAME
    assert pacer.lateness_ms[-1] == pytest.approx(10, abs=1e-6)


async def test_small_lateness_does_not_skip_and_catches_up() -> None:
    clock = FakeClock(T0, autojump=True)
    playout = PlayoutBuffer(RATE, 1000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    await fill(playout, range(20))
    await pacer.next_frame()
    await clock.advance(0.02 + 0.06)  # 60 ms late: within max_lag
    sleeps = clock.sleeps
    burst = [await pacer.next_frame() for _ in range(4)]
    assert clock.sleeps == sleeps, "behind schedule: frames go out back to back"
    assert pacer.skipped_frames == 0
    assert playout.dropped == 0
    assert [f.samples[0] for f in burst] == [2, 3, 4, 5]
    assert [f.pts for f in burst] == [k * FRAME for k in (1, 2, 3, 4)]
    assert list(pacer.lateness_ms)[-4:] == pytest.approx([60, 40, 20, 0], abs=1e-6)
    await pacer.next_frame()
    assert clock.sleeps == sleeps + 1, "back on schedule it sleeps again"


async def test_delay_between_pushed_audio_and_output_stays_bounded_through_stalls() -> None:
    """A producer pushes speech in real time; the sender stalls now and then (busy loop).

    Without skipping, every stall would add its length to the delay for good.
    """
    clock = FakeClock(T0)
    playout = PlayoutBuffer(RATE, 4000)
    pacer = OutboundPacer(playout, clock, max_lag_ms=80)
    out: list[tuple[float, OutFrame]] = []

    async def sender() -> None:
        await clock.sleep_until(T0 + 0.1)  # 100 ms of pre-roll
        for k in range(600):
            if k in (100, 300, 301, 450):
                await clock.sleep_until(clock.now() + 0.4)  # a stall
            frame = await pacer.next_frame()
            out.append((clock.now(), frame))

    task = asyncio.create_task(sender())
    for k in range(800):  # the producer: frame k is pushed at T0 + k * 20 ms
        await clock.advance_to(T0 + k * 0.02)
        assert await playout.push(marked(k))
    await clock.run(task, limit=30)

    delays = [when - (T0 + (int(f.samples[0]) - 1) * 0.02) for when, f in out if f.speech]
    assert delays[0] == pytest.approx(0.1, abs=1e-6)
    assert pacer.skipped_frames >= 4 * 18
    assert playout.dropped == pacer.skipped_frames * FRAME
    assert max(delays) <= 0.1 + 0.08 + 0.02 + 1e-6
    assert np.median(delays[-100:]) == pytest.approx(0.1, abs=0.021)


async def test_reset_schedule_restarts_timing_but_keeps_pts_running() -> None:
    clock = FakeClock(T0, autojump=True)
    pacer = OutboundPacer(PlayoutBuffer(RATE, 1000), clock, max_lag_ms=80)
    for _ in range(3):
        await pacer.next_frame()
    await clock.advance(5.0)  # idle track
    pacer.reset_schedule()
    frame = await pacer.next_frame()
    assert pacer.skipped_frames == 0, "an idle track is not a stall"
    assert frame.pts == 3 * FRAME
    at = clock.now()
    await pacer.next_frame()
    assert clock.now() == pytest.approx(at + 0.02)

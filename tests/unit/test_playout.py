"""PlayoutBuffer: bounded in ms, push waits when full, clear() on barge-in, counters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from realtime.playout import PlayoutBuffer

RATE = 48_000
FRAME = 960


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def ramp(start: int, count: int) -> np.ndarray:
    return (np.arange(start, start + count) % 30000).astype(np.int16)


def test_capacity_is_the_bound_in_ms() -> None:
    buf = PlayoutBuffer(RATE, 500)
    assert buf.capacity == 24_000
    assert buf.level == 0
    assert buf.level_ms == 0
    assert PlayoutBuffer(24_000, 4000).capacity == 96_000


@pytest.mark.parametrize("max_ms", [0, -10])
def test_bound_must_be_positive(max_ms: int) -> None:
    with pytest.raises(ValueError, match="max_ms"):
        PlayoutBuffer(RATE, max_ms)


async def test_push_below_the_bound_returns_at_once() -> None:
    buf = PlayoutBuffer(RATE, 500)
    assert await asyncio.wait_for(buf.push(ramp(0, 12_000)), 1) is True
    assert buf.level == 12_000
    assert buf.level_ms == 250


async def test_push_waits_when_full_and_resumes_when_pulled() -> None:
    buf = PlayoutBuffer(RATE, 100)  # 4800 samples
    task = asyncio.create_task(buf.push(ramp(0, 9600)))
    await settle()
    assert not task.done(), "push must wait while the buffer is full"
    assert buf.level == buf.capacity, "it fills the buffer up to the bound first"
    out = []
    while buf.level or not task.done():
        frame = buf.pull(FRAME)
        assert frame is not None
        assert buf.level <= buf.capacity
        out.append(frame)
        await settle()
    assert task.result() is True
    np.testing.assert_array_equal(np.concatenate(out), ramp(0, 9600))


async def test_level_never_exceeds_the_bound_with_many_pushes() -> None:
    buf = PlayoutBuffer(RATE, 200)
    pushes = asyncio.create_task(_push_all(buf, [ramp(i * 5000, 5000) for i in range(6)]))
    played = []
    for _ in range(200):
        await settle()
        assert buf.level <= buf.capacity
        frame = buf.pull(FRAME)
        if frame is not None:
            played.append(frame)
        if pushes.done() and buf.level == 0:
            break
    assert pushes.result() == [True] * 6
    np.testing.assert_array_equal(np.concatenate(played)[:30_000], ramp(0, 30_000))


async def _push_all(buf: PlayoutBuffer, chunks: list[np.ndarray]) -> list[bool]:
    return [await buf.push(chunk) for chunk in chunks]


def test_pull_returns_none_when_empty() -> None:
    buf = PlayoutBuffer(RATE, 100)
    assert buf.pull(FRAME) is None
    assert buf.played == 0


async def test_pull_zero_pads_the_last_partial_frame() -> None:
    buf = PlayoutBuffer(RATE, 100)
    await buf.push(ramp(1, 1500))
    first = buf.pull(FRAME)
    second = buf.pull(FRAME)
    assert first is not None and second is not None
    assert first.dtype == np.int16 and second.size == FRAME
    np.testing.assert_array_equal(first, ramp(1, FRAME))
    np.testing.assert_array_equal(second[:540], ramp(1 + FRAME, 540))
    assert not second[540:].any()
    assert buf.pull(FRAME) is None
    assert buf.played == 1500, "played counts real samples, not the padding"


async def test_pull_spans_chunk_boundaries() -> None:
    buf = PlayoutBuffer(RATE, 100)
    for start, size in ((0, 100), (100, 7), (107, 1000)):
        await buf.push(ramp(start, size))
    frame = buf.pull(FRAME)
    assert frame is not None
    np.testing.assert_array_equal(frame, ramp(0, FRAME))
    assert buf.level == 1107 - FRAME


async def test_clear_empties_and_counts() -> None:
    buf = PlayoutBuffer(RATE, 100)
    await buf.push(ramp(0, 3000))
    assert buf.clear() == 3000
    assert buf.level == 0
    assert buf.cleared == 3000
    assert buf.pull(FRAME) is None
    assert buf.clear() == 0
    assert buf.cleared == 3000


async def test_clear_wakes_and_discards_a_waiting_push() -> None:
    buf = PlayoutBuffer(RATE, 100)
    stale = asyncio.create_task(buf.push(ramp(0, 20_000)))
    await settle()
    assert not stale.done()
    assert buf.clear() == buf.capacity
    assert await asyncio.wait_for(stale, 1) is False
    assert buf.level == 0, "nothing of the interrupted speech may stay queued"
    # New speech after the barge-in plays normally.
    assert await buf.push(ramp(7, 500)) is True
    frame = buf.pull(FRAME)
    assert frame is not None
    np.testing.assert_array_equal(frame[:500], ramp(7, 500))


async def test_a_push_waiting_on_a_full_buffer_of_new_speech_still_gives_up() -> None:
    buf = PlayoutBuffer(RATE, 100)
    stale = asyncio.create_task(buf.push(ramp(0, 20_000)))
    await settle()
    buf.clear()
    await buf.push(ramp(0, buf.capacity))  # new speech fills the buffer before it wakes
    assert await asyncio.wait_for(stale, 1) is False
    assert buf.level == buf.capacity


async def test_drop_discards_from_the_front_and_counts() -> None:
    buf = PlayoutBuffer(RATE, 100)
    await buf.push(ramp(0, 3000))
    assert buf.drop(1000) == 1000
    assert buf.dropped == 1000
    frame = buf.pull(FRAME)
    assert frame is not None
    np.testing.assert_array_equal(frame, ramp(1000, FRAME))
    assert buf.drop(5000) == 3000 - 1000 - FRAME
    assert buf.dropped == 3000 - FRAME
    assert buf.level == 0
    assert buf.drop(100) == 0


async def test_drop_makes_room_for_a_waiting_push() -> None:
    buf = PlayoutBuffer(RATE, 100)
    task = asyncio.create_task(buf.push(ramp(0, 6000)))
    await settle()
    assert not task.done()
    buf.drop(2000)
    await settle()
    assert task.done() and task.result() is True
    assert buf.level == 4000


async def test_counters_add_up() -> None:
    buf = PlayoutBuffer(RATE, 1000)
    await buf.push(ramp(0, 10_000))
    buf.pull(FRAME)
    buf.pull(FRAME)
    buf.drop(FRAME)
    buf.clear()
    assert (buf.played, buf.dropped, buf.cleared) == (2 * FRAME, FRAME, 10_000 - 3 * FRAME)
    assert buf.played + buf.dropped + buf.cleared == 10_000


async def test_speech_running_dry_mid_stream_counts_as_an_underrun() -> None:
    buf = PlayoutBuffer(1000, 4000)  # 1 kHz: 20-sample frames are 20 ms
    await buf.push(np.ones(40, dtype=np.int16))
    assert buf.pull(20) is not None
    assert buf.pull(20) is not None
    for _ in range(10):  # 200 ms of silence: the engine's next speech is late
        assert buf.pull(20) is None
    await buf.push(np.ones(40, dtype=np.int16))
    assert buf.pull(20) is not None
    assert buf.underruns == 1
    assert buf.pull(20) is not None
    assert buf.underruns == 1  # once per gap, not per frame


async def test_a_long_pause_or_a_barge_in_is_not_an_underrun() -> None:
    buf = PlayoutBuffer(1000, 4000)
    await buf.push(np.ones(20, dtype=np.int16))
    assert buf.pull(20) is not None
    for _ in range(50):  # 1 s of silence: that reply had ended
        buf.pull(20)
    await buf.push(np.ones(20, dtype=np.int16))
    assert buf.pull(20) is not None
    await buf.push(np.ones(20, dtype=np.int16))
    assert buf.pull(20) is not None
    assert buf.pull(20) is None
    buf.clear()  # barge-in, then the next reply
    await buf.push(np.ones(20, dtype=np.int16))
    assert buf.pull(20) is not None
    assert buf.underruns == 0

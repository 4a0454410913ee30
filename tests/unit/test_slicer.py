"""UnitSlicer: exact 1 s units on the media clock, deadlines, late audio, anchor and drift."""

from __future__ import annotations

import numpy as np
import pytest

from omni.api import INPUT_RATE, UNIT_SAMPLES
from realtime.slicer import UnitSlicer

T0 = 500.0


def ramp(start: int, count: int) -> np.ndarray:
    """Samples whose value is their own media position (exact in float32 below 2**24)."""
    return np.arange(start, start + count, dtype=np.float32)


def feed_ramp(
    slicer: UnitSlicer, start: int, stop: int, chunk: int, t_first: float, rate: float = 1.0
) -> list[float]:
    """Append positions start..stop in ``chunk``-sized pieces, each arriving when its last
    sample was produced (sender clock ``rate`` times ours); returns the arrival times."""
    arrivals = []
    pos = start
    while pos < stop:
        n = min(chunk, stop - pos)
        now = t_first + (pos + n - start) / INPUT_RATE / rate
        slicer.append(ramp(pos, n), now)
        arrivals.append(now)
        pos += n
    return arrivals


def test_units_are_exactly_one_second_and_keep_every_sample_in_order() -> None:
    slicer = UnitSlicer()
    sizes = [317, 1000, 5, 4096, 1, 160, 999]
    pos, k, units = 0, 0, []
    total = int(3.5 * UNIT_SAMPLES)
    while pos < total:
        n = min(sizes[k % len(sizes)], total - pos)
        slicer.append(ramp(pos, n), T0 + (pos + n) / INPUT_RATE)
        pos += n
        k += 1
        while slicer.reached.is_set():
            units.append(slicer.take())
    assert [u.index for u in units] == [0, 1, 2]
    for i, unit in enumerate(units):
        assert unit.audio.dtype == np.float32
        assert unit.audio.shape == (UNIT_SAMPLES,)
        assert unit.start_ms == i * 1000
        assert unit.missing_ms == 0
        np.testing.assert_array_equal(unit.audio, ramp(i * UNIT_SAMPLES, UNIT_SAMPLES))
    assert slicer.position == total
    assert slicer.next_index == 3
    assert slicer.late_samples == 0


def test_reached_is_set_exactly_when_the_last_sample_of_the_open_unit_arrives() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, UNIT_SAMPLES - 1), T0)
    assert not slicer.reached.is_set()
    slicer.append(ramp(UNIT_SAMPLES - 1, 1), T0 + 0.01)
    assert slicer.reached.is_set()
    slicer.take()
    assert not slicer.reached.is_set(), "the next unit has no audio yet"


def test_reached_stays_set_when_the_stream_already_passed_the_next_unit() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, int(2.5 * UNIT_SAMPLES)), T0)
    assert slicer.take().missing_ms == 0
    assert slicer.reached.is_set()
    unit = slicer.take()
    np.testing.assert_array_equal(unit.audio, ramp(UNIT_SAMPLES, UNIT_SAMPLES))
    assert not slicer.reached.is_set()
    third = slicer.take()
    assert third.missing_ms == 500
    np.testing.assert_array_equal(third.audio[:8000], ramp(2 * UNIT_SAMPLES, 8000))
    assert not third.audio[8000:].any()


def test_unit_taken_by_deadline_has_a_silent_tail_and_reports_missing_ms() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 9600, 320, T0)
    assert not slicer.reached.is_set()
    unit = slicer.take()
    assert unit.audio.shape == (UNIT_SAMPLES,)
    np.testing.assert_array_equal(unit.audio[:9600], ramp(0, 9600))
    assert not unit.audio[9600:].any()
    assert unit.missing_ms == 400
    assert unit.captured_at == 0.0, "its last sample never arrived"


def test_late_audio_after_a_deadline_take_is_dropped_and_later_units_do_not_shift() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 9600, 320, T0)
    first = slicer.take()  # deadline: the stream stalled 0.6 s into unit 0
    assert first.missing_ms == 400
    # The stalled audio comes in late, then the stream goes on.
    feed_ramp(slicer, 9600, 3 * UNIT_SAMPLES, 320, T0 + 1.3)
    assert slicer.late_samples == UNIT_SAMPLES - 9600
    second = slicer.take()
    third = slicer.take()
    assert (second.index, third.index) == (1, 2)
    np.testing.assert_array_equal(second.audio, ramp(UNIT_SAMPLES, UNIT_SAMPLES))
    np.testing.assert_array_equal(third.audio, ramp(2 * UNIT_SAMPLES, UNIT_SAMPLES))
    assert second.missing_ms == third.missing_ms == 0


def test_late_chunk_straddling_the_taken_unit_keeps_only_its_new_part() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, 15000), T0)
    slicer.take()
    slicer.append(ramp(15000, 2000), T0 + 1.2)  # 1000 late samples, 1000 for unit 1
    assert slicer.late_samples == 1000
    assert slicer.position == 17000
    slicer.append(ramp(17000, UNIT_SAMPLES), T0 + 1.3)
    np.testing.assert_array_equal(slicer.take().audio, ramp(UNIT_SAMPLES, UNIT_SAMPLES))


def test_whole_units_missing_then_late_audio_for_them_is_dropped() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, 4000), T0)
    units = [slicer.take(), slicer.take(), slicer.take()]  # a 3 s stall
    assert [u.missing_ms for u in units] == [750, 1000, 1000]
    assert not units[1].audio.any() and not units[2].audio.any()
    # Everything the sender had queued arrives at once, then the stream goes on.
    slicer.append(ramp(4000, 4 * UNIT_SAMPLES), T0 + 3.5)
    assert slicer.late_samples == 3 * UNIT_SAMPLES - 4000
    unit = slicer.take()
    assert unit.index == 3
    np.testing.assert_array_equal(unit.audio, ramp(3 * UNIT_SAMPLES, UNIT_SAMPLES))


def test_captured_at_is_the_arrival_time_of_the_units_last_sample() -> None:
    slicer = UnitSlicer()
    chunk = 300  # does not divide 16000: chunks straddle unit boundaries
    arrivals = feed_ramp(slicer, 0, 3 * UNIT_SAMPLES + 100, chunk, T0)
    units = [slicer.take() for _ in range(3)]
    for i, unit in enumerate(units):
        last_sample = (i + 1) * UNIT_SAMPLES - 1
        assert unit.captured_at == arrivals[last_sample // chunk]


def test_captured_at_of_units_completed_by_one_big_chunk() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, 100), T0)
    slicer.append(ramp(100, 2 * UNIT_SAMPLES), T0 + 2.0)
    slicer.append(ramp(2 * UNIT_SAMPLES + 100, UNIT_SAMPLES), T0 + 3.0)
    assert [slicer.take().captured_at for _ in range(3)] == [T0 + 2.0, T0 + 2.0, T0 + 3.0]


def test_anchor_is_the_arrival_of_media_position_zero() -> None:
    slicer = UnitSlicer()
    assert not slicer.started
    assert not slicer.anchored.is_set()
    slicer.append(ramp(0, 320), T0 + 0.02)
    assert slicer.started
    assert slicer.anchored.is_set()
    assert slicer.due_time(0) == pytest.approx(T0 + 1.0)
    assert slicer.due_time(4) == pytest.approx(T0 + 5.0)


def test_anchor_tracks_the_earliest_arrival_under_jitter() -> None:
    rng = np.random.default_rng(7)
    slicer = UnitSlicer()
    for k in range(250):  # 5 s of 20 ms chunks, each 0..40 ms late
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02 + rng.uniform(0.0, 0.04))
    # The first chunk was late too: the anchor must not keep that delay.
    assert slicer.due_time(5) == pytest.approx(T0 + 6.0, abs=0.005)


def test_anchor_drops_a_late_start_once_packets_come_on_time() -> None:
    slicer = UnitSlicer()
    for k in range(50):  # the first second comes 80 ms late (e.g. a jitter buffer filling)
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02 + 0.08)
    assert slicer.due_time(1) == pytest.approx(T0 + 2.08)
    for k in range(50, 150):  # then on time
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02)
    assert slicer.due_time(3) == pytest.approx(T0 + 4.0, abs=1e-6)


def test_anchor_ignores_a_stretch_of_late_packets() -> None:
    slicer = UnitSlicer()
    for k in range(500):  # 10 s; seconds 4..6 arrive 200 ms late (congestion)
        late = 0.2 if 200 <= k < 300 else 0.0
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02 + late)
        assert slicer.due_time(20) == pytest.approx(T0 + 21.0, abs=1e-6)


def test_due_time_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        UnitSlicer().due_time(0)


@pytest.mark.parametrize("rate", [1.003, 0.997], ids=["sender-fast", "sender-slow"])
def test_due_time_follows_a_drifting_sender_clock(rate: float) -> None:
    slicer = UnitSlicer()
    rng = np.random.default_rng(3)
    seconds = 60
    k = 0
    while k * 320 < seconds * UNIT_SAMPLES:
        ideal = T0 + (k + 1) * 0.02 / rate
        slicer.append(ramp(k * 320, 320), ideal + rng.uniform(0.0, 0.02))
        k += 1
        while slicer.reached.is_set():
            slicer.take()
    index = slicer.next_index
    assert index == seconds
    true_due = T0 + (index + 1) / rate
    naive_due = T0 + (index + 1)  # the anchor of the first packet, never updated
    assert abs(naive_due - true_due) > 0.15, "the drift must matter for this test to mean much"
    assert slicer.due_time(index) == pytest.approx(true_due, abs=0.05)


def test_start_without_audio_runs_silent_units_on_the_wall_clock() -> None:
    slicer = UnitSlicer()
    slicer.start(100.0)
    assert slicer.started and slicer.anchored.is_set()
    assert slicer.due_time(0) == pytest.approx(101.0)
    unit = slicer.take()
    assert unit.index == 0
    assert not unit.audio.any()
    assert unit.audio.shape == (UNIT_SAMPLES,)
    assert unit.missing_ms == 1000
    assert unit.captured_at == 0.0


def test_start_after_audio_does_not_move_the_anchor() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, 320), T0 + 0.02)
    slicer.start(T0 + 7.0)
    assert slicer.due_time(0) == pytest.approx(T0 + 1.0)


def test_first_audio_after_start_is_placed_at_its_wall_clock_position() -> None:
    slicer = UnitSlicer()
    slicer.start(100.0)
    slicer.take()
    slicer.take()  # units 0 and 1 ran silent
    # Audio starts arriving 2.5 s after start(): its first 20 ms chunk ends at 102.5.
    feed_ramp(slicer, 0, UNIT_SAMPLES, 320, 102.48)
    unit = slicer.take()
    assert unit.index == 2
    offset = int(0.48 * INPUT_RATE)  # 102.48 - 102.0
    assert not unit.audio[:offset].any()
    np.testing.assert_array_equal(unit.audio[offset:], ramp(0, UNIT_SAMPLES - offset))
    np.testing.assert_array_equal(slicer.take().audio[:offset], ramp(UNIT_SAMPLES - offset, offset))
    assert slicer.due_time(5) == pytest.approx(106.0, abs=0.001)


def test_first_audio_after_start_for_a_taken_unit_is_late() -> None:
    slicer = UnitSlicer()
    slicer.start(100.0)
    slicer.take()
    slicer.take()  # units 0 and 1 ran silent: the open unit 2 starts at wall time 102.0
    # Audio starts arriving at 101.5, in unit 1's time: that part is late and dropped.
    feed_ramp(slicer, 0, UNIT_SAMPLES + 8000, 320, 101.5)
    assert slicer.late_samples == 8000
    unit = slicer.take()
    assert unit.index == 2
    np.testing.assert_array_equal(unit.audio, ramp(8000, UNIT_SAMPLES))
    assert unit.missing_ms == 0


def test_units_before_first_audio_placed_at_wall_clock_report_it_missing() -> None:
    slicer = UnitSlicer()
    slicer.start(100.0)
    slicer.take()
    slicer.take()
    feed_ramp(slicer, 0, UNIT_SAMPLES, 320, 102.48)
    unit = slicer.take()
    assert not unit.audio[:7680].any()
    assert unit.missing_ms == 480
    assert slicer.take().missing_ms == 520, "unit 3's tail has not come yet"


def test_a_reported_gap_skips_media_time_and_counts_as_missing() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 8000, 320, T0)
    # 5000 samples were lost (the converter says so); the stream goes on after them.
    slicer.append(ramp(13_000, 320), T0 + 13_320 / INPUT_RATE, gap=5000)
    assert slicer.position == 13_320
    feed_ramp(slicer, 13_320, 2 * UNIT_SAMPLES, 320, T0 + 13_320 / INPUT_RATE)
    unit = slicer.take()
    np.testing.assert_array_equal(unit.audio[:8000], ramp(0, 8000))
    assert not unit.audio[8000:13_000].any()
    np.testing.assert_array_equal(unit.audio[13_000:], ramp(13_000, 3000))
    assert unit.missing_ms == 5000 * 1000 // INPUT_RATE
    nxt = slicer.take()
    np.testing.assert_array_equal(nxt.audio, ramp(UNIT_SAMPLES, UNIT_SAMPLES))
    assert nxt.missing_ms == 0
    assert slicer.due_time(2) == pytest.approx(T0 + 3.0)


def test_a_gap_spanning_units_completes_them_as_missing() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 12_000, 320, T0)
    slicer.append(ramp(40_000, 320), T0 + 40_320 / INPUT_RATE, gap=28_000)
    assert slicer.reached.is_set()
    units = [slicer.take(), slicer.take()]
    assert [u.missing_ms for u in units] == [250, 1000]
    assert not units[1].audio.any()
    assert units[1].captured_at == pytest.approx(T0 + 40_320 / INPUT_RATE)
    feed_ramp(slicer, 40_320, 3 * UNIT_SAMPLES, 320, T0 + 40_320 / INPUT_RATE)
    third = slicer.take()
    assert third.missing_ms == 500
    np.testing.assert_array_equal(third.audio[8000:], ramp(40_000, 8000))


def test_a_gap_after_a_deadline_take_keeps_later_units_aligned() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 9600, 320, T0)
    assert slicer.take().missing_ms == 400  # deadline: packets stopped at 0.6 s
    # Packets resume at media time 1.5 s; the converter reports the 0.9 s gap.
    slicer.append(ramp(24_000, 320), T0 + 24_320 / INPUT_RATE, gap=24_000 - 9600)
    feed_ramp(slicer, 24_320, 3 * UNIT_SAMPLES, 320, T0 + 24_320 / INPUT_RATE)
    assert slicer.late_samples == 0
    unit = slicer.take()
    assert unit.missing_ms == 500
    np.testing.assert_array_equal(unit.audio[8000:], ramp(24_000, 8000))
    np.testing.assert_array_equal(slicer.take().audio, ramp(2 * UNIT_SAMPLES, UNIT_SAMPLES))


def test_locate_maps_wall_time_to_unit_and_fraction() -> None:
    slicer = UnitSlicer()
    assert slicer.locate(T0) is None
    slicer.start(10.0)
    index, fraction = slicer.locate(10.0)  # type: ignore[misc]
    assert (index, fraction) == (0, 0.0)
    index, fraction = slicer.locate(11.25)  # type: ignore[misc]
    assert index == 1
    assert fraction == pytest.approx(0.25)
    index, fraction = slicer.locate(13.999)  # type: ignore[misc]
    assert index == 3
    assert fraction == pytest.approx(0.999)
    index, fraction = slicer.locate(9.5)  # type: ignore[misc]
    assert index == -1
    assert fraction == pytest.approx(0.5)


def test_locate_agrees_with_due_time() -> None:
    slicer = UnitSlicer()
    feed_ramp(slicer, 0, 2 * UNIT_SAMPLES, 320, T0 + 0.02)
    for n in range(4):
        index, fraction = slicer.locate(slicer.due_time(n) - 0.001)  # type: ignore[misc]
        assert index == n
        assert fraction == pytest.approx(0.999, abs=1e-6)


def test_empty_appends_change_nothing() -> None:
    slicer = UnitSlicer()
    slicer.append(ramp(0, 320), T0)
    slicer.append(np.zeros(0, np.float32), T0 + 0.5)
    assert slicer.position == 320
    assert slicer.due_time(0) == pytest.approx(T0 - 0.02 + 1.0)
    assert not slicer.reached.is_set()


@pytest.mark.parametrize("rate", [1 / 1.02, 1.02], ids=["sender-2%-slow", "sender-2%-fast"])
def test_a_drifting_sender_loses_nothing(rate: float) -> None:
    """Units are taken when the sender's media says they end: 2 % drift is 20 ms a second."""
    slicer = UnitSlicer()
    rng = np.random.default_rng(5)
    taken = []
    for k in range(30 * 50):
        arrival = T0 + (k + 1) * 0.02 / rate + rng.uniform(0.0, 0.01)
        slicer.append(ramp(k * 320, 320), arrival)
        while slicer.started and slicer.reached.is_set():
            # Within the unit loop's grace at first, within jitter once the drift is known.
            slack = 0.15 if slicer.next_index < 5 else 0.03
            assert arrival <= slicer.due_time(slicer.next_index) + slack
            taken.append(slicer.take())
    assert len(taken) == 30
    assert sum(u.missing_ms for u in taken) == 0
    assert slicer.late_samples == 0
    assert slicer.drift == pytest.approx(1 / rate - 1, abs=0.002)


def test_a_quiet_sender_leaves_silence_not_missing_audio() -> None:
    slicer = UnitSlicer()
    for k in range(40):  # 0.8 s of audio, then the sender goes quiet (DTX)
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02, quiet=k == 39)
    unit = slicer.take()
    assert unit.missing_ms == 0
    # 1.6 s later it talks again; the silence in between is not lost either.
    slicer.append(ramp(0, 320), T0 + 2.42, gap=int(1.6 * INPUT_RATE), missing=0)
    assert slicer.take().missing_ms == 0
    assert slicer.missing_samples == 0


def test_a_unit_cut_short_by_loss_counts_its_tail_missing() -> None:
    slicer = UnitSlicer()
    for k in range(40):
        slicer.append(ramp(k * 320, 320), T0 + (k + 1) * 0.02)
    assert slicer.take().missing_ms == 200

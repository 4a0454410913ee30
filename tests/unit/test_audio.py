"""Media conversions: inbound 48 kHz stereo -> 16 kHz mono, outbound 24 -> 48 kHz, video."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from omni.api import INPUT_RATE, MAX_FRAME_SIDE
from realtime.audio import (
    WIRE_RATE,
    Converted,
    InboundAudio,
    OutboundAudio,
    pcm_frame,
    to_mono,
    video_to_rgb,
)
from tests.support.media import rms, tone

FRAME = 960  # 20 ms at 48 kHz
OUT_FRAME = FRAME * INPUT_RATE // WIRE_RATE  # 320


def stereo_frame(
    mono: np.ndarray, pts: int | None, rate: int = WIRE_RATE, right: np.ndarray | None = None
) -> av.AudioFrame:
    left = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
    r = left if right is None else (np.clip(right, -1, 1) * 32767).astype(np.int16)
    packed = np.stack([left, r], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def convert_stream(
    conv: InboundAudio, signal: np.ndarray, first_pts: int = 0, elapsed: float = 0.02
) -> np.ndarray:
    parts = []
    for k in range(signal.size // FRAME):
        chunk = signal[k * FRAME : (k + 1) * FRAME]
        out = conv.convert(stereo_frame(chunk, first_pts + k * FRAME), elapsed)
        assert out.gap == 0
        parts.append(out.samples)
    return np.concatenate(parts)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------- inbound


def test_stereo_48k_s16_becomes_16k_mono_float32_of_the_right_length() -> None:
    conv = InboundAudio()
    signal = tone(1.0, 440)
    total = 0
    for k in range(50):
        out = conv.convert(stereo_frame(signal[k * FRAME : (k + 1) * FRAME], k * FRAME), 0.02)
        assert isinstance(out, Converted)
        assert out.gap == 0
        assert out.samples.dtype == np.float32
        assert out.samples.ndim == 1
        total += out.samples.size
        # The output stays on the media clock after every frame (the first frame is padded
        # by the resampler's filter delay), so a unit completes with its last frame.
        assert total == (k + 1) * OUT_FRAME
    assert total == INPUT_RATE
    assert conv.gap_samples == 0
    assert conv.dropped_frames == 0


def test_odd_frame_sizes_keep_the_output_on_the_media_clock() -> None:
    conv = InboundAudio()
    signal = tone(1.0, 440)
    pos = total = 0
    for size in (441, 960, 480, 1920, 123, 960, 2880):
        out = conv.convert(stereo_frame(signal[pos : pos + size], pos), 0.02)
        pos += size
        total += out.samples.size
        assert abs(total - pos * INPUT_RATE / WIRE_RATE) <= 1


def test_resampling_keeps_a_440_hz_tone() -> None:
    out = convert_stream(InboundAudio(), tone(1.0, 440, level=0.5))
    steady = out[1600:]
    assert peak_hz(steady, INPUT_RATE) == pytest.approx(440, abs=3)
    assert peak_hz(convert_stream(InboundAudio(), tone(1.0, 1000))[1600:], INPUT_RATE) == (
        pytest.approx(1000, abs=3)
    )
    # Still a sine: nearly all the energy sits at the tone's frequency.
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size))) ** 2
    peak = int(np.argmax(spectrum))
    assert spectrum[peak - 3 : peak + 4].sum() / spectrum.sum() > 0.99


def test_resampling_keeps_the_level_of_a_mono_source_sent_as_stereo() -> None:
    # Browsers send a mono microphone as Opus stereo with both channels equal.
    out = convert_stream(InboundAudio(), tone(1.0, 440, level=0.5))
    assert rms(out[1600:]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_full_scale_input_stays_within_minus_one_to_one() -> None:
    out = convert_stream(InboundAudio(), tone(1.0, 440, level=0.99))
    assert np.abs(out).max() <= 1.0
    assert np.abs(out).max() > 0.95


def test_stereo_is_mixed_down_to_mono_by_averaging() -> None:
    signal = tone(0.5, 440, level=0.4)
    out = convert_stream(InboundAudio(), signal)
    assert rms(convert_stream(InboundAudio(), np.zeros_like(signal))) == 0.0
    half = []
    conv = InboundAudio()
    for k in range(signal.size // FRAME):
        left = signal[k * FRAME : (k + 1) * FRAME]
        frame = stereo_frame(left, k * FRAME, right=np.zeros(FRAME, np.float32))
        half.append(conv.convert(frame, 0.02).samples)
    # One silent channel halves the amplitude (mean of the channels), not drops it.
    assert rms(np.concatenate(half)[1600:]) == pytest.approx(rms(out[1600:]) / 2, rel=0.05)
    # Opposite channels cancel.
    conv = InboundAudio()
    cancel = [
        conv.convert(
            stereo_frame(
                signal[k * FRAME : (k + 1) * FRAME],
                k * FRAME,
                right=-signal[k * FRAME : (k + 1) * FRAME],
            ),
            0.02,
        ).samples
        for k in range(signal.size // FRAME)
    ]
    assert np.abs(np.concatenate(cancel)).max() < 1e-3


def test_to_mono_scales_and_averages_every_sample_format() -> None:
    left = np.array([0.5, -0.25, 1.0, 0.0], dtype=np.float32)
    right = np.array([0.5, 0.25, 0.0, -1.0], dtype=np.float32)
    expected = (left + right) / 2
    planar = av.AudioFrame.from_ndarray(np.stack([left, right]), format="fltp", layout="stereo")
    packed = av.AudioFrame.from_ndarray(
        np.stack([left, right], axis=1).reshape(1, -1), format="flt", layout="stereo"
    )
    s16 = av.AudioFrame.from_ndarray(
        (np.stack([left, right], axis=1).reshape(1, -1) * 32767).astype(np.int16),
        format="s16",
        layout="stereo",
    )
    mono = av.AudioFrame.from_ndarray(left.reshape(1, -1), format="flt", layout="mono")
    np.testing.assert_allclose(to_mono(planar), expected, atol=1e-6)
    np.testing.assert_allclose(to_mono(packed), expected, atol=1e-6)
    np.testing.assert_allclose(to_mono(s16), expected, atol=1e-4)
    np.testing.assert_allclose(to_mono(mono), left, atol=1e-6)
    assert to_mono(s16).dtype == np.float32


def test_a_pts_gap_is_reported_as_the_same_length_of_silence() -> None:
    conv = InboundAudio()
    signal = tone(1.0, 440)
    first = convert_stream(conv, signal[: 10 * FRAME])
    # Frames 10..14 (100 ms) are lost; frame 15 arrives 120 ms after frame 9.
    out = conv.convert(stereo_frame(signal[15 * FRAME : 16 * FRAME], 15 * FRAME), 0.12)
    assert out.gap == 5 * OUT_FRAME
    assert conv.gap_samples == 5 * OUT_FRAME
    assert out.samples.size == OUT_FRAME
    # The stream stays on the media clock: exactly 16 frames' worth so far.
    assert first.size + out.gap + out.samples.size == 16 * OUT_FRAME
    assert rms(out.samples[40:]) > 0.1
    # And it goes on contiguously.
    nxt = conv.convert(stereo_frame(signal[16 * FRAME : 17 * FRAME], 16 * FRAME), 0.02)
    assert (nxt.gap, nxt.samples.size) == (0, OUT_FRAME)


def test_a_short_gap_with_little_wall_time_is_still_filled() -> None:
    """Packets lost while the reader was busy: a gap within 2 x elapsed + 200 ms is real."""
    conv = InboundAudio()
    conv.convert(stereo_frame(tone(0.02, 440), 0), 0.0)
    out = conv.convert(stereo_frame(tone(0.02, 440), 10 * FRAME), 0.001)
    assert out.gap == 9 * OUT_FRAME
    assert out.samples.size == OUT_FRAME


def test_a_frame_repeating_covered_time_is_dropped() -> None:
    conv = InboundAudio()
    signal = tone(0.2, 440)
    convert_stream(conv, signal[: 5 * FRAME])
    out = conv.convert(stereo_frame(signal[3 * FRAME : 4 * FRAME], 3 * FRAME), 0.02)
    assert (out.gap, out.samples.size) == (0, 0)
    assert out.samples.dtype == np.float32
    assert conv.dropped_frames == 1
    # The stream goes on normally afterwards.
    out = conv.convert(stereo_frame(signal[5 * FRAME : 6 * FRAME], 5 * FRAME), 0.02)
    assert (out.gap, out.samples.size) == (0, OUT_FRAME)
    assert conv.gap_samples == 0


def test_a_frame_overlapping_by_less_than_half_is_kept_without_a_gap() -> None:
    conv = InboundAudio()
    conv.convert(stereo_frame(tone(0.02, 440), 0), 0.0)
    out = conv.convert(stereo_frame(tone(0.02, 440), FRAME - 100), 0.02)
    assert (out.gap, out.samples.size) == (0, OUT_FRAME)
    assert conv.dropped_frames == 0


@pytest.mark.parametrize("jump_s", [3.0, 30.0, 3600.0])
def test_a_big_timestamp_jump_with_little_wall_time_is_a_discontinuity(jump_s: float) -> None:
    conv = InboundAudio()
    convert_stream(conv, tone(0.2, 440))
    jumped = 10 * FRAME + int(jump_s * WIRE_RATE)
    out = conv.convert(stereo_frame(tone(0.02, 440), jumped), 0.02)
    assert out.gap == 0, "no seconds of silence for a sender clock jump"
    assert out.samples.size == OUT_FRAME
    # After the jump, the new timeline is followed: the next frame is contiguous.
    out = conv.convert(stereo_frame(tone(0.02, 440), jumped + FRAME), 0.02)
    assert (out.gap, out.samples.size) == (0, OUT_FRAME)
    assert conv.gap_samples == 0


def test_a_jump_fills_only_the_wall_time_that_really_passed() -> None:
    conv = InboundAudio()
    convert_stream(conv, tone(0.2, 440))
    # A 20 s jump, but only 0.5 s passed: about 0.48 s of media went missing.
    out = conv.convert(stereo_frame(tone(0.02, 440), 10 * FRAME + 20 * WIRE_RATE), 0.5)
    assert out.gap == pytest.approx(0.48 * INPUT_RATE, abs=1)
    assert out.samples.size == OUT_FRAME


def test_a_long_real_loss_matching_the_wall_time_is_filled() -> None:
    conv = InboundAudio()
    convert_stream(conv, tone(0.2, 440))
    out = conv.convert(stereo_frame(tone(0.02, 440), 10 * FRAME + 8 * WIRE_RATE), 8.02)
    assert out.gap == 8 * INPUT_RATE
    assert conv.gap_samples == 8 * INPUT_RATE


def test_frames_without_pts_are_appended_as_they_come() -> None:
    conv = InboundAudio()
    outs = [conv.convert(stereo_frame(tone(0.02, 440), None), 0.02) for _ in range(10)]
    assert sum(o.samples.size for o in outs) == 10 * OUT_FRAME
    assert all(o.gap == 0 for o in outs)
    assert conv.gap_samples == 0 and conv.dropped_frames == 0


def test_mono_16k_input_passes_through_with_gaps_filled() -> None:
    conv = InboundAudio()
    outs = []
    for k in (0, 1, 2, 5):  # 20 ms frames at 16 kHz, frames 3 and 4 lost
        mono = (tone(0.02, 440, rate=16_000) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(mono, format="s16", layout="mono")
        frame.sample_rate = 16_000
        frame.pts = k * 320
        frame.time_base = Fraction(1, 16_000)
        outs.append(conv.convert(frame, 0.02 if k < 5 else 0.06))
    assert [o.gap for o in outs] == [0, 0, 0, 640]
    assert sum(o.samples.size for o in outs) == 4 * 320
    steady = np.concatenate([o.samples for o in outs])[100:]
    assert rms(steady) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)


def test_a_gap_in_float_planar_input_is_filled_too() -> None:
    conv = InboundAudio()

    def fltp(pts: int) -> av.AudioFrame:
        left = tone(0.02, 440, level=0.5)
        frame = av.AudioFrame.from_ndarray(np.stack([left, left]), format="fltp", layout="stereo")
        frame.sample_rate = WIRE_RATE
        frame.pts = pts
        frame.time_base = Fraction(1, WIRE_RATE)
        return frame

    conv.convert(fltp(0), 0.0)
    out = conv.convert(fltp(3 * FRAME), 0.06)
    assert (out.gap, out.samples.size) == (2 * OUT_FRAME, OUT_FRAME)
    assert np.abs(out.samples).max() <= 0.55


# ---------------------------------------------------------------- outbound


def test_outbound_24k_becomes_48k_twice_as_long() -> None:
    out = OutboundAudio()
    speech = tone(1.0, 440, rate=24_000, level=0.5)
    chunks = [out.convert(speech[k * 2400 : (k + 1) * 2400]) for k in range(10)]
    for chunk in chunks:
        assert chunk.dtype == np.int16
    assert all(c.size == 4800 for c in chunks[1:])
    total = np.concatenate(chunks)
    assert 2 * speech.size - 100 <= total.size <= 2 * speech.size
    steady = total[4800:].astype(np.float64) / 32767
    assert peak_hz(steady, WIRE_RATE) == pytest.approx(440, abs=3)
    assert rms(steady) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_outbound_clips_and_handles_empty_input() -> None:
    out = OutboundAudio()
    assert out.convert(np.zeros(0, np.float32)).size == 0
    loud = out.convert(np.full(4800, 3.0, dtype=np.float32))
    assert loud.max() <= 32767
    assert loud[200:].min() > 32000, "values above 1.0 clip to full scale, not wrap"


def test_pcm_frame_is_a_mono_s16_frame_with_pts_and_time_base() -> None:
    samples = np.arange(960, dtype=np.int16)
    frame = pcm_frame(samples, pts=4800)
    assert frame.format.name == "s16"
    assert frame.layout.name == "mono"
    assert frame.sample_rate == WIRE_RATE
    assert frame.samples == 960
    assert frame.pts == 4800
    assert frame.time_base == Fraction(1, WIRE_RATE)
    np.testing.assert_array_equal(frame.to_ndarray().reshape(-1), samples)
    other = pcm_frame(samples[:480], pts=0, rate=24_000)
    assert other.sample_rate == 24_000
    assert other.time_base == Fraction(1, 24_000)


# ---------------------------------------------------------------- video


def video_frame(
    width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 60)
) -> av.VideoFrame:
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = rgb
    return av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((640, 480), (448, 336)),
        ((1920, 1080), (448, 252)),
        ((480, 640), (336, 448)),
        ((448, 448), (448, 448)),
        ((320, 240), (320, 240)),
    ],
)
def test_video_to_rgb_caps_the_long_side_and_keeps_aspect(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    rgb = video_to_rgb(video_frame(*size))
    assert rgb.dtype == np.uint8
    assert rgb.shape == (expected[1], expected[0], 3)
    assert max(rgb.shape[:2]) <= MAX_FRAME_SIDE
    assert rgb.shape[1] / rgb.shape[0] == pytest.approx(size[0] / size[1], rel=0.02)
    assert rgb.flags["C_CONTIGUOUS"]


def test_video_to_rgb_keeps_colours() -> None:
    rgb = video_to_rgb(video_frame(640, 360, (200, 30, 60)))
    mean = rgb.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, (200, 30, 60), atol=8)


def test_video_to_rgb_honours_a_smaller_max_side() -> None:
    rgb = video_to_rgb(video_frame(1280, 720), max_side=100)
    assert rgb.shape == (56, 100, 3)


def test_a_change_of_codec_rate_mid_call_keeps_converting() -> None:
    conv = InboundAudio()

    def frame(rate: int, pts: int, samples: int) -> av.AudioFrame:
        f = av.AudioFrame.from_ndarray(
            np.zeros((1, samples), np.int16), format="s16", layout="mono"
        )
        f.sample_rate = rate
        f.pts = pts
        f.time_base = Fraction(1, rate)
        return f

    first = conv.convert(frame(48_000, 0, 960), 0.0)
    assert first.samples.size == 320
    total = sum(conv.convert(frame(8_000, 160 * k, 160), 0.02).samples.size for k in range(1, 51))
    assert abs(total - 50 * 320) <= 32


def test_a_jump_without_lost_packets_is_dtx_silence_not_loss() -> None:
    """Opus DTX: the sender left 400 ms out on purpose (sequence numbers are contiguous)."""
    conv = InboundAudio()
    signal = tone(1.0, 440)
    convert_stream(conv, signal[: 5 * FRAME])
    out = conv.convert(stereo_frame(signal[:FRAME], 25 * FRAME), 0.42, lost_packets=0)
    assert out.gap == 20 * OUT_FRAME
    assert out.missing == 0
    assert (conv.gap_samples, conv.dtx_samples) == (0, 20 * OUT_FRAME)


def test_only_the_lost_packets_of_a_jump_are_missing() -> None:
    conv = InboundAudio()
    signal = tone(1.0, 440)
    convert_stream(conv, signal[: 5 * FRAME])
    out = conv.convert(stereo_frame(signal[:FRAME], 25 * FRAME), 0.42, lost_packets=3)
    assert out.gap == 20 * OUT_FRAME
    assert out.missing == 3 * OUT_FRAME
    assert (conv.gap_samples, conv.dtx_samples) == (3 * OUT_FRAME, 17 * OUT_FRAME)


def test_a_dtx_frame_says_the_sender_is_quiet() -> None:
    conv = InboundAudio()
    frame = stereo_frame(np.zeros(FRAME, dtype=np.float32), 0)
    assert conv.convert(frame, 0.02, lost_packets=0, dtx=True).quiet
    assert not conv.convert(stereo_frame(tone(0.02, 440), FRAME), 0.02, lost_packets=0).quiet


def _layout_frame(signal: np.ndarray, layout: str, pts: int) -> av.AudioFrame:
    channels = len(av.AudioLayout(layout).channels)
    pcm = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
    packed = np.repeat(pcm[:, None], channels, axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
    frame.sample_rate = WIRE_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, WIRE_RATE)
    return frame


@pytest.mark.parametrize("layout", ["mono", "stereo", "5.1"])
def test_every_layout_keeps_the_level_of_the_same_signal_on_each_channel(layout: str) -> None:
    signal = tone(1.0, 440, level=0.5)
    conv = InboundAudio()
    out = np.concatenate(
        [
            conv.convert(
                _layout_frame(signal[k * FRAME : (k + 1) * FRAME], layout, k * FRAME), 0.02
            ).samples
            for k in range(signal.size // FRAME)
        ]
    )
    assert out.size == signal.size // 3
    assert rms(out[1600:]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_a_pts_jump_is_counted_in_whole_samples_at_16_khz() -> None:
    conv = InboundAudio()
    conv.convert(stereo_frame(np.zeros(FRAME, np.float32), 0), 0.02)
    # Three 20 ms packets lost, then one of 10 ms (480 samples at 48 kHz): exact sample counts.
    out = conv.convert(stereo_frame(np.zeros(FRAME, np.float32), 4 * FRAME), 0.08, lost_packets=3)
    assert (out.gap, out.missing) == (3 * OUT_FRAME, 3 * OUT_FRAME)
    out = conv.convert(
        stereo_frame(np.zeros(FRAME, np.float32), 5 * FRAME + 480), 0.03, lost_packets=0
    )
    assert (out.gap, out.missing) == (160, 0), "a jump with nothing lost is DTX"
    assert conv.gap_samples == 3 * OUT_FRAME and conv.dtx_samples == 160


def test_a_raw_frame_converts_at_the_side_the_engine_asks_for() -> None:
    from realtime.inbound import RawFrame

    raw = RawFrame(video_frame(1920, 1080), offset_ms=250)
    assert raw.to_frame(1280).rgb.shape == (720, 1280, 3), "HD: the official 1280x720"
    assert raw.to_frame(448).rgb.shape == (252, 448, 3)
    assert raw.to_frame(1280).offset_ms == 250

"""Media conversions at the edges of the pipeline (PyAV frames <-> numpy).

Inbound: decoded call audio (any rate/layout, usually 48 kHz stereo s16) becomes 16 kHz mono
float32 on the media clock: a gap in the timestamps becomes silence of the same length.
Outbound: 24 kHz mono float32 speech becomes 48 kHz mono s16 for the Opus encoder.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, MAX_FRAME_SIDE, OUTPUT_RATE

WIRE_RATE = 48_000
"""Sample rate of call audio on the wire (Opus) and of the outbound track."""


class InboundAudio:
    """Converts one inbound track's frames to a gap-free 16 kHz mono float32 stream."""

    def __init__(self, max_gap_s: float = 5.0) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_RATE)
        self._max_gap_s = max_gap_s
        self._next_pts_s: float | None = None
        self._started = False
        self.gap_samples = 0
        """Input samples filled with silence because packets never came."""
        self.dropped_frames = 0
        """Frames dropped because their media time had already been covered."""

    def convert(self, frame: av.AudioFrame, elapsed_s: float) -> NDArray[np.float32]:
        """Samples to append for ``frame`` (silence first if packets were lost).

        ``elapsed_s`` is the wall time since the previous frame: a timestamp jump far beyond
        it is a discontinuity of the sender's clock, not lost media.
        """
        rate = frame.sample_rate
        base = frame.time_base
        start_s = float(frame.pts * base) if frame.pts is not None and base is not None else None
        parts: list[NDArray[np.float32]] = []
        if start_s is not None and self._next_pts_s is not None:
            gap_s = start_s - self._next_pts_s
            if gap_s <= -frame.samples / rate / 2:
                self.dropped_frames += 1
                return np.zeros(0, dtype=np.float32)
            if gap_s > 0.5 / rate:
                if gap_s > max(2 * elapsed_s + 0.2, self._max_gap_s):
                    gap_s = max(0.0, elapsed_s - frame.samples / rate)
                gap = round(gap_s * rate)
                if gap:
                    self.gap_samples += gap
                    parts.append(self._resample_silence(gap, rate, frame.layout.name))
        first = not self._started
        self._started = True
        if start_s is not None:
            self._next_pts_s = start_s + frame.samples / rate
        frame.pts = None
        converted = self._resample(frame)
        if first:
            # The resampler holds back a few samples (its filter delay).  Pad the start by as
            # much, so that the output count matches the input time after every frame and a
            # unit completes with the frame that carries its last sample, not one frame later.
            expected = round(frame.samples * INPUT_RATE / rate)
            if converted.size < expected:
                parts.append(np.zeros(expected - converted.size, dtype=np.float32))
        parts.append(converted)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _resample_silence(self, samples: int, rate: int, layout: str) -> NDArray[np.float32]:
        channels = 2 if layout == "stereo" else 1
        silent = av.AudioFrame.from_ndarray(
            np.zeros((1, samples * channels), dtype=np.int16), format="s16", layout=layout
        )
        silent.sample_rate = rate
        return self._resample(silent)

    def _resample(self, frame: av.AudioFrame) -> NDArray[np.float32]:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


class OutboundAudio:
    """Converts engine speech (24 kHz float32) to wire-rate mono s16, keeping filter state."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=WIRE_RATE)

    def convert(self, speech: NDArray[np.float32]) -> NDArray[np.int16]:
        if speech.size == 0:
            return np.zeros(0, dtype=np.int16)
        clipped = np.clip(speech, -1.0, 1.0).astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(clipped.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = OUTPUT_RATE
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(out).astype(np.int16, copy=False)


def pcm_frame(samples: NDArray[np.int16], pts: int, rate: int = WIRE_RATE) -> av.AudioFrame:
    """A mono s16 frame for the outbound track."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def video_to_rgb(frame: av.VideoFrame, max_side: int = MAX_FRAME_SIDE) -> NDArray[np.uint8]:
    """RGB pixels of a decoded frame, scaled so its long side is at most ``max_side``."""
    width, height = frame.width, frame.height
    scale = min(1.0, max_side / max(width, height))
    out_w = max(2, int(width * scale) // 2 * 2)
    out_h = max(2, int(height * scale) // 2 * 2)
    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24").to_ndarray()
    return np.ascontiguousarray(rgb, dtype=np.uint8)

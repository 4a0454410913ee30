"""Media conversions at the edges of the pipeline (PyAV frames <-> numpy).

Inbound: decoded call audio (any rate/layout, usually 48 kHz stereo s16) becomes 16 kHz mono
float32 on the media clock: a gap in the timestamps becomes silence of the same length.
Outbound: 24 kHz mono float32 speech becomes 48 kHz mono s16 for the Opus encoder.  aiortc's
encoder would take 24 kHz frames itself, but its resampler then holds every packet back by one
20 ms frame (its fixed-size frame FIFO meets the filter delay), and its CPU per frame measured
the same as at 48 kHz (about 0.26 ms, libopus dominates): so the 24 -> 48 kHz step stays ours,
done once per unit of speech, not once per frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, MAX_FRAME_SIDE, OUTPUT_RATE
from realtime.errors import InvalidVoice

WIRE_RATE = 48_000
"""Sample rate of call audio on the wire (Opus) and of the outbound track."""


@dataclass(frozen=True, slots=True)
class ReceivedAudio:
    """A decoded inbound audio frame and what its RTP packet said about the stream."""

    frame: av.AudioFrame
    lost_packets: int | None = None
    """Packets missing (by sequence number) just before this one; None when unknown."""
    dtx: bool = False
    """The packet is a DTX frame (1-2 bytes): the sender has gone quiet, and sends nothing
    more until it talks again or refreshes its comfort noise."""


@dataclass(frozen=True, slots=True)
class Converted:
    gap: int
    """16 kHz samples of silence that come first: media the sender did not send (DTX) or
    that never arrived."""
    samples: NDArray[np.float32]
    missing: int = 0
    """How much of ``gap`` is lost media (the rest the sender left out on purpose, DTX)."""
    quiet: bool = False
    """The sender is in DTX after these samples: silence until its next packet."""


_INT_SCALE = {"s16": 1 / 32768, "s16p": 1 / 32768, "s32": 1 / 2**31, "s32p": 1 / 2**31}


def to_mono(frame: av.AudioFrame) -> NDArray[np.float32]:
    """The frame's channels averaged into one float32 channel in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    planes = data if frame.format.is_planar else data.reshape(-1, channels).T
    mono: NDArray[np.float32] = (
        planes.mean(axis=0, dtype=np.float32) if channels > 1 else planes[0].astype(np.float32)
    )
    scale = _INT_SCALE.get(frame.format.name)
    if scale is not None:
        mono *= scale
    return mono


_STEREO_DOWNMIX_GAIN = np.float32(1 / np.sqrt(2))
"""libswresample mixes stereo into mono as (L + R) / sqrt(2); times this it is (L + R) / 2,
the plain average, so a full-scale stereo frame stays within [-1, 1]."""


class InboundAudio:
    """Converts one inbound track's frames to a gap-free 16 kHz mono float32 stream.

    Media time is kept as integers: the frame's pts (in its time base) and sample counts.
    Mono and stereo frames go through one libswresample pass (downmix, rate and format at
    once); other layouts are averaged to mono first.
    """

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_RATE)
        self._next_pts: int | None = None
        """Where the next frame should start, in the previous frame's time base."""
        self._base: Fraction | None = None
        self._rate = 0
        self._started = False
        self.gap_samples = 0
        """16 kHz samples of packets that never came (silence, or repaired by the decoder)."""
        self.repaired_samples = 0
        """Of those, what the decoder rebuilt (from FEC data, or concealed)."""
        self.dtx_samples = 0
        """16 kHz samples of silence the sender left out (DTX): not lost."""
        self.dropped_frames = 0
        """Frames dropped because their media time had already been covered."""

    def convert(
        self,
        frame: av.AudioFrame,
        elapsed_s: float,
        lost_packets: int | None = None,
        dtx: bool = False,
    ) -> Converted:
        """What to append for ``frame``: silence first if its timestamp jumps, then its samples.

        ``elapsed_s`` is the wall time since the previous frame: a timestamp jump far beyond
        it is a discontinuity of the sender's clock, not lost media.  A jump with no packet
        lost before the frame (``lost_packets == 0``) is DTX: the sender was quiet.  Without
        that knowledge (None) every jump counts as lost media.
        """
        rate = frame.sample_rate
        base = frame.time_base
        pts = frame.pts if base is not None else None
        # The frame's length in its time base (aiortc's is 1/rate: the sample count).
        length = round(frame.samples / (rate * base)) if base is not None else 0
        gap = 0
        if (
            base is not None
            and pts is not None
            and self._next_pts is not None
            and base == self._base
        ):
            jump = pts - self._next_pts
            if 2 * jump <= -length:
                self.dropped_frames += 1
                return Converted(0, np.zeros(0, dtype=np.float32))
            if jump * base > 2 * elapsed_s + 0.2:
                # The sender's clock jumped: assume only the wall time went by.
                gap = max(0, round((elapsed_s - frame.samples / rate) * INPUT_RATE))
            else:
                gap = max(0, round(jump * base * INPUT_RATE))
        missing = gap
        if gap and lost_packets is not None:
            missing = min(gap, lost_packets * frame.samples * INPUT_RATE // rate)
        self.gap_samples += missing
        self.dtx_samples += gap - missing
        if not gap and lost_packets:  # lost, and the decoder repaired them in the stream
            repaired = lost_packets * frame.samples * INPUT_RATE // rate
            self.gap_samples += repaired
            self.repaired_samples += repaired
        if pts is not None:
            self._next_pts = pts + length
            self._base = base
        if rate != self._rate:
            # A new codec (Opus to PCMU, say) changes the rate: start a new filter.
            self._rate = rate
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_RATE)
        converted = self._resample(frame)
        if not self._started:
            self._started = True
            # The resampler holds back a few samples (its filter delay).  Pad the start by as
            # much, so that the output count matches the input time after every frame and a
            # unit completes with the frame that carries its last sample, not one frame later.
            expected = frame.samples * INPUT_RATE // rate
            if converted.size < expected:
                pad = np.zeros(expected - converted.size, dtype=np.float32)
                converted = np.concatenate([pad, converted])
        return Converted(gap, converted, missing, dtx)

    def _resample(self, frame: av.AudioFrame) -> NDArray[np.float32]:
        channels = len(frame.layout.channels)
        if channels > 2:
            mono = av.AudioFrame.from_ndarray(
                to_mono(frame).reshape(1, -1), format="flt", layout="mono"
            )
            mono.sample_rate = frame.sample_rate
            frame, channels = mono, 1
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(out).astype(np.float32, copy=False)
        if channels == 2:
            samples *= _STEREO_DOWNMIX_GAIN
        return samples


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


MAX_VOICE_BYTES = 3 * 1024 * 1024
MAX_VOICE_S = 30.0
MIN_VOICE_S = 1.0


def decode_voice(data: bytes) -> NDArray[np.float32]:
    """A voice reference clip (any audio file PyAV reads) as 16 kHz mono float32.

    Raises InvalidVoice with the reason: too large, not audio, too short or too long.
    """
    if len(data) > MAX_VOICE_BYTES:
        raise InvalidVoice(f"the voice clip is larger than {MAX_VOICE_BYTES // 2**20} MiB")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_RATE)
    parts: list[NDArray[np.float32]] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InvalidVoice("the voice clip has no audio")
            for frame in container.decode(audio=0):
                frame.pts = None
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32)
                    total += samples.size
                    if total > MAX_VOICE_S * INPUT_RATE:
                        raise InvalidVoice(f"the voice clip is longer than {MAX_VOICE_S:.0f} s")
                    parts.append(samples)
    except (av.FFmpegError, ValueError) as exc:
        raise InvalidVoice(f"the voice clip is not an audio file PyAV can read: {exc}") from None
    if total < MIN_VOICE_S * INPUT_RATE:
        raise InvalidVoice(f"the voice clip is shorter than {MIN_VOICE_S:.0f} s")
    return np.concatenate(parts)

"""What a client sends and keeps: a sound file or the microphone as a track, and the
service's speech written to a sound file.

A file track plays in real time at 48 kHz mono, then silence, and says when it has played.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

RATE = 48_000
FRAME = 960
"""20 ms at 48 kHz."""


def _read(path: Path) -> NDArray[np.int16]:
    """A sound file (anything FFmpeg reads) as 48 kHz mono s16."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    parts: list[NDArray[np.int16]] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio")
        for frame in container.decode(audio=0):
            frame.pts = None
            parts += [
                f.to_ndarray().reshape(-1).astype(np.int16) for f in resampler.resample(frame)
            ]
    parts += [f.to_ndarray().reshape(-1).astype(np.int16) for f in resampler.resample(None)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class AudioFile(MediaStreamTrack):
    """Plays a sound file once in real time, then silence; ``done`` is set when it has."""

    kind = "audio"

    def __init__(self, samples: NDArray[np.int16], lead_in_s: float = 0.0) -> None:
        super().__init__()
        pad = np.zeros(round(lead_in_s * RATE), np.int16)
        self._samples = np.concatenate([pad, samples])
        self._pts = 0
        self._start: float | None = None
        self.done = asyncio.Event()
        self.duration_s = self._samples.size / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._pts / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self._samples[self._pts : self._pts + FRAME]
        if chunk.size < FRAME:
            self.done.set()
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, RATE)
        self._pts += FRAME
        return frame


def file_audio(path: Path | str, lead_in_s: float = 0.5) -> AudioFile:
    """A track that plays ``path`` (any format FFmpeg reads) after ``lead_in_s`` of silence."""
    return AudioFile(_read(Path(path)), lead_in_s)


def microphone(device: str | None = None) -> MediaStreamTrack:
    """The default microphone (PulseAudio on Linux, AVFoundation on macOS, DirectShow on
    Windows), or ``device`` in that system's naming."""
    if sys.platform == "darwin":
        player = MediaPlayer(device or ":0", format="avfoundation")
    elif sys.platform == "win32":
        player = MediaPlayer(f"audio={device or 'Microphone'}", format="dshow")
    else:
        player = MediaPlayer(device or "default", format="pulse")
    if player.audio is None:
        raise ValueError("the microphone gave no audio track")
    return player.audio


class SpeechRecorder:
    """Collects the service's speech (48 kHz mono) and writes it to a sound file."""

    def __init__(self) -> None:
        self._parts: list[NDArray[np.float32]] = []
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)

    async def record(self, track: MediaStreamTrack) -> None:
        """Keep every frame of ``track`` until it ends."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for out in self._resampler.resample(frame):
                    self._parts.append(out.to_ndarray().reshape(-1).astype(np.float32))

    @property
    def samples(self) -> NDArray[np.float32]:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)

    def write(self, path: Path | str) -> None:
        """Write what was received as 16-bit mono: WAV, or FLAC for a ``.flac`` name."""
        pcm = (np.clip(self.samples, -1, 1) * 32767).astype(np.int16)
        target = Path(path)
        if target.suffix.lower() != ".flac":
            with wave.open(str(target), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(RATE)
                out.writeframes(pcm.tobytes())
            return
        with av.open(str(target), mode="w") as container:
            stream = container.add_stream("flac", rate=RATE)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)

"""Media generated in code for the tests: speech-like audio, tones, video."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

_FORMANTS = ((700.0, 130.0), (1220.0, 200.0), (2600.0, 300.0))


_HARMONICS = 29
_CONTROL_SAMPLES = 32
"""The harmonics' gains change slowly: they are computed once per this many samples."""


def speechlike(
    seconds: float, rate: int = 48_000, seed: int = 1, level: float = 0.3
) -> NDArray[np.float32]:
    """Voiced, syllable-modulated audio with formants, which VADs take for speech.

    About 13 ms per second of audio at 48 kHz: cheap, but still generate long clips before
    a call starts, not on a loop that carries one.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    syllables = max(1, int(seconds * 4))
    shift = rng.uniform(0.85, 1.15, size=(syllables, len(_FORMANTS)))
    coarse_t = t[::_CONTROL_SAMPLES]
    which = np.minimum((coarse_t * 4).astype(int), syllables - 1)
    k = np.arange(1, _HARMONICS + 1)[:, None]
    freq = k * f0[::_CONTROL_SAMPLES][None, :]
    gain = 0.05 / k + sum(
        np.exp(-0.5 * ((freq - centre * shift[which, j]) / width) ** 2)
        for j, (centre, width) in enumerate(_FORMANTS)
    )
    gains = np.repeat(gain, _CONTROL_SAMPLES, axis=1)[:, :n]
    # sin(k * phase) for every harmonic k, as the imaginary part of exp(i * phase) ** k.
    step = np.exp(1j * phase)
    harmonic = np.ones(n, dtype=np.complex128)
    out = np.zeros(n)
    for row in gains:
        harmonic *= step
        out += row * harmonic.imag
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    envelope = np.clip(envelope * 1.3, 0, 1)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    out = out * envelope * fade
    out = out / (np.max(np.abs(out)) + 1e-9) * level
    return out.astype(np.float32)


def silence(seconds: float, rate: int = 48_000) -> NDArray[np.float32]:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def tone(
    seconds: float, freq: float, rate: int = 48_000, level: float = 0.3
) -> NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def write_wav(path: Path, samples: NDArray[np.float32], rate: int) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_y4m(
    path: Path, seconds: float, fps: int = 15, width: int = 320, height: int = 240
) -> None:
    """A YUV4MPEG2 clip: a colour bar that changes colour every second."""
    colours = [(81, 90, 240), (145, 54, 34), (41, 240, 110)]  # red, green, blue in YCbCr
    buf = io.BytesIO()
    buf.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
    for i in range(int(seconds * fps)):
        y, cb, cr = colours[(i // fps) % len(colours)]
        buf.write(b"FRAME\n")
        buf.write(bytes([y]) * (width * height))
        buf.write(bytes([cb]) * (width * height // 4))
        buf.write(bytes([cr]) * (width * height // 4))
    path.write_bytes(buf.getvalue())

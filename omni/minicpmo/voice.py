"""Voice reference clips: the model speaks like the clip it is prepared with.

The vocoder reads the clip from a file, the language model takes it as 16 kHz samples: we keep
both, as a 16 kHz mono WAV written once per clip.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from omni.api import INPUT_RATE, EngineUnavailable

MAX_VOICE_S = 30.0


def read_wav(path: Path) -> NDArray[np.float32]:
    """A 16-bit PCM WAV file as 16 kHz mono float32."""
    try:
        with wave.open(str(path), "rb") as file:
            if file.getsampwidth() != 2:
                raise EngineUnavailable(f"voice {path} must be 16-bit PCM WAV")
            rate, channels = file.getframerate(), file.getnchannels()
            pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
    except (OSError, wave.Error) as exc:
        raise EngineUnavailable(f"cannot read voice {path}: {exc}") from None
    audio: NDArray[np.float32] = pcm.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768
    if rate != INPUT_RATE:
        audio = soxr.resample(audio, rate, INPUT_RATE).astype(np.float32)
    return audio[: int(MAX_VOICE_S * INPUT_RATE)]


def write_wav(path: Path, audio: NDArray[np.float32]) -> Path:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(INPUT_RATE)
        file.writeframes(pcm.tobytes())
    return path


def find_default_voice(configured: str, model_dir: Path | None) -> Path:
    """The configured voice file, else the first WAV under the model folder's assets/."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise EngineUnavailable(f"voice file {path} does not exist")
        return path
    if model_dir is not None:
        found = (
            sorted((model_dir / "assets").rglob("*.wav")) if (model_dir / "assets").is_dir() else []
        )
        if found:
            return found[0]
    raise EngineUnavailable(
        "no voice reference: set engine.minicpmo.voice to a 16-bit WAV of the voice to speak in"
    )

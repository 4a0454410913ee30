"""Real models for the lite engine tests (loaded once per test session)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import soxr
from numpy.typing import NDArray

from omni.api import INPUT_RATE, OUTPUT_RATE
from omni.lite.config import LiteConfig
from omni.lite.engine import LiteReplica
from omni.lite.tts import Voice


class Speaker:
    """Speaks test sentences with Piper (the engine's own voice package)."""

    def __init__(self) -> None:
        self._voice = Voice(threads=2, speech_rate=1.0)
        self._voice.load()

    def say(self, text: str, rate: int = INPUT_RATE) -> NDArray[np.float32]:
        """``text`` spoken, without the silence Piper puts around it (so pauses are exact)."""
        audio = self._voice.synthesize(text)
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        if loud.size:
            margin = OUTPUT_RATE // 50
            audio = audio[max(0, loud[0] - margin) : loud[-1] + margin]
        return soxr.resample(audio, OUTPUT_RATE, rate).astype(np.float32)


@pytest.fixture(scope="session")
def speaker() -> Speaker:
    return Speaker()


@pytest.fixture(scope="session")
def replica() -> Iterator[LiteReplica]:
    # nice=0: warmup runs on this (the test session's) thread, which must keep its priority.
    replica = LiteReplica(LiteConfig(max_reply_sentences=4, max_reply_tokens=96, nice=0))
    replica.warmup()
    yield replica
    replica.shutdown()

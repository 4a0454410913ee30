"""Server-side voice activity detection on the inbound 16 kHz stream (WebRTC VAD).

Speech starts when at least ``start_ms`` of the last 300 ms were voiced, and stops after
``stop_ms`` of unvoiced audio.  Positions are media milliseconds, so the events line up with
units.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import webrtcvad
from numpy.typing import NDArray

from omni.api import INPUT_RATE
from realtime.config import VadConfig

VAD_FRAME_MS = 20
_FRAME = INPUT_RATE * VAD_FRAME_MS // 1000
_WINDOW_FRAMES = 300 // VAD_FRAME_MS


class SpeechEdge(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    edge: SpeechEdge
    at_ms: int
    """Media time of the edge (start of the first voiced frame, or end of the last one)."""


class SpeechDetector:
    def __init__(self, config: VadConfig) -> None:
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._start_frames = max(1, config.start_ms // VAD_FRAME_MS)
        self._stop_frames = max(1, config.stop_ms // VAD_FRAME_MS)
        self._pending = np.zeros(0, dtype=np.int16)
        self._window: deque[bool] = deque(maxlen=_WINDOW_FRAMES)
        self._frames = 0
        self._silent_run = 0
        self._speaking = False
        self._speech_start_frame = 0
        self._voiced_frames = 0
        self.voiced_total_ms = 0
        """Voiced audio heard in the whole call (it only grows)."""
        self._last_voiced_frame: int | None = None

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def voiced_ms(self) -> int:
        """Voiced audio in the current speech (0 when not speaking): how long the person has
        really been talking, not counting the pause that will end it."""
        return self._voiced_frames * VAD_FRAME_MS if self._speaking else 0

    @property
    def speech_ms(self) -> int:
        """How long the current speech has lasted (0 when not speaking)."""
        if not self._speaking:
            return 0
        return (self._frames - self._speech_start_frame) * VAD_FRAME_MS

    def feed(self, samples: NDArray[np.float32]) -> list[SpeechEvent]:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
        if self._pending.size:
            pcm = np.concatenate([self._pending, pcm])
        whole = pcm.size // _FRAME * _FRAME
        self._pending = pcm[whole:].copy()
        events: list[SpeechEvent] = []
        for offset in range(0, whole, _FRAME):
            voiced = self._vad.is_speech(pcm[offset : offset + _FRAME].tobytes(), INPUT_RATE)
            event = self._advance(voiced)
            if event is not None:
                events.append(event)
        return events

    @property
    def since_speech_ms(self) -> int | None:
        """Unvoiced audio since the last voiced frame of a speech segment, also after the
        segment has stopped (0 while voiced; None before any speech)."""
        if self._last_voiced_frame is None:
            return None
        return (self._frames - self._last_voiced_frame) * VAD_FRAME_MS

    def _advance(self, voiced: bool) -> SpeechEvent | None:
        self.voiced_total_ms += VAD_FRAME_MS if voiced else 0
        self._window.append(voiced)
        self._frames += 1
        if not self._speaking:
            if sum(self._window) >= self._start_frames:
                self._speaking = True
                self._silent_run = 0
                first = (
                    self._frames
                    - len(self._window)
                    + next(i for i, v in enumerate(self._window) if v)
                )
                self._speech_start_frame = first
                self._voiced_frames = sum(self._window)
                self._last_voiced_frame = self._frames if voiced else first + 1
                return SpeechEvent(SpeechEdge.STARTED, first * VAD_FRAME_MS)
            return None
        self._silent_run = 0 if voiced else self._silent_run + 1
        self._voiced_frames += voiced
        if voiced:
            self._last_voiced_frame = self._frames
        if self._silent_run >= self._stop_frames:
            self._speaking = False
            self._window.clear()
            end = self._frames - self._silent_run
            return SpeechEvent(SpeechEdge.STOPPED, end * VAD_FRAME_MS)
        return None

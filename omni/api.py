"""The engine contract: what every duplex model engine offers the call runtime.

A call hands its engine session one :class:`Unit` per second (16 kHz mono audio, exactly
:data:`UNIT_SAMPLES` samples, plus the video frames sampled in that second) and gets back one
:class:`StepResult` (listen or speak, text, 24 kHz speech).  ``DuplexSession.step`` blocks: it
always runs on the thread that owns the engine's model replica, never on the event loop.

This module imports no torch and no transport code, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

INPUT_RATE = 16_000
"""Sample rate of the audio an engine hears (Hz, mono float32 in [-1, 1])."""
OUTPUT_RATE = 24_000
"""Sample rate of the speech an engine produces (Hz, mono float32 in [-1, 1])."""
UNIT_MS = 1000
"""Length of one time-division unit (ms)."""
UNIT_SAMPLES = INPUT_RATE * UNIT_MS // 1000
"""Input samples in one unit."""
OUTPUT_UNIT_SAMPLES = OUTPUT_RATE * UNIT_MS // 1000
"""Output samples that cover one unit of speech."""
MAX_FRAME_SIDE = 448
"""Longest side of a video frame handed to an engine (pixels)."""


class EngineError(RuntimeError):
    """An engine failed in a way the call should report (the call may go on)."""


class EngineUnavailable(EngineError):
    """An engine cannot run on this machine (missing weights, device or dependency)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One video frame: RGB, uint8, shape (height, width, 3), long side <= MAX_FRAME_SIDE."""

    rgb: NDArray[np.uint8]
    offset_ms: int
    """Position of the frame inside its unit (ms from the unit's start)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """What the model gets every second."""

    index: int
    start_ms: int
    """Start on the call's media clock (derived from the sample count, not wall time)."""
    audio: NDArray[np.float32]
    """16 kHz mono, exactly UNIT_SAMPLES samples; gaps are silence."""
    frames: tuple[Frame, ...] = ()
    captured_at: float = 0.0
    """Monotonic time when the unit's last sample arrived (for latency figures)."""
    missing_ms: int = 0
    """How much of the unit was filled with silence because media did not arrive."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What the model did with one unit."""

    listen: bool
    text: str = ""
    audio: NDArray[np.float32] | None = None
    """24 kHz mono speech for this unit (None while listening)."""
    end_of_turn: bool = False
    timings: Mapping[str, float] = field(default_factory=dict)
    """Milliseconds per engine stage, as the engine reports them."""
    heard: str = ""
    """What the engine understood the person to say, when a turn of theirs ended in this unit
    (engines with their own speech recognition; '' otherwise)."""


class Language(StrEnum):
    EN = "en"
    ZH = "zh"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-call settings a client may choose (validated before they get here)."""

    instructions: str | None = None
    """System prompt; None means the engine's default for the language."""
    language: Language = Language.EN
    voice: NDArray[np.float32] | None = None
    """Reference clip for the voice, 16 kHz mono float32 (engines that clone voices)."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    description: str
    replicas: int
    """How many sessions can run at once."""


class DuplexSession(Protocol):
    """One call's state inside one model replica."""

    def step(self, unit: Unit) -> StepResult:
        """Feed one unit and decide; blocking, runs on the replica's thread."""
        ...

    def interrupt(self) -> None:
        """Barge-in: stop speaking now; the next unit listens.  Thread-safe, never blocks."""
        ...

    def close(self) -> None:
        """Full cleanup; afterwards the replica is ready for the next session."""
        ...


class Replica(Protocol):
    """One model copy.  All of its methods run on the one thread that owns it."""

    def warmup(self) -> None:
        """Load and exercise the model so the first call is not slow."""
        ...

    def open_session(self, config: SessionConfig) -> DuplexSession:
        """Prepare a clean session (system prompt, voice)."""
        ...

    def shutdown(self) -> None:
        """Free the model."""
        ...


class Engine(Protocol):
    """A named engine that builds replicas; building one does no heavy work."""

    @property
    def info(self) -> EngineInfo: ...

    def create_replica(self, index: int) -> Replica:
        """Create replica ``index``; heavy loading belongs in ``Replica.warmup``."""
        ...


@dataclass(frozen=True, slots=True)
class ReplicaEngine:
    """An Engine whose replicas all come from one factory (``make(index)``)."""

    info: EngineInfo
    make: Callable[[int], Replica]

    def create_replica(self, index: int) -> Replica:
        return self.make(index)


def require(condition: bool, message: str) -> None:
    """Settings checks: raise ValueError(message) unless ``condition`` holds.

    Messages start with the setting's name ("port must be ..."), so the settings loader can
    prefix its section."""
    if not condition:
        raise ValueError(message)


def silence(samples: int) -> NDArray[np.float32]:
    """A buffer of silence."""
    return np.zeros(samples, dtype=np.float32)

"""The engine contract: what every duplex model engine offers the call runtime.

A call hands its engine session one :class:`Unit` per second (16 kHz mono audio, exactly
:data:`UNIT_SAMPLES` samples, plus the video frames sampled in that second) and gets back one
:class:`StepResult` (listen or speak, text, 24 kHz speech).  ``DuplexSession.step`` blocks: it
always runs on the thread that owns the engine's model replica, never on the event loop.

This module imports no torch and no transport code, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from omni.errors import EngineBusy, EngineError, EngineUnavailable

__all__ = [
    "INPUT_RATE",
    "MAX_FRAME_SIDE",
    "MAX_STEP_AUDIO_SAMPLES",
    "OUTPUT_RATE",
    "OUTPUT_UNIT_SAMPLES",
    "UNIT_MS",
    "UNIT_SAMPLES",
    "DuplexSession",
    "Engine",
    "EngineBinding",
    "EngineBusy",
    "EngineError",
    "EngineInfo",
    "EngineSource",
    "EngineUnavailable",
    "Frame",
    "Language",
    "QueueCallback",
    "Replica",
    "ReplicaEngine",
    "SessionConfig",
    "StepResult",
    "Unit",
    "check_result",
    "require",
    "silence",
]

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
"""Longest side of a video frame handed to an engine (pixels), unless its
``EngineInfo.frame_side`` asks for larger frames."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One video frame: RGB, uint8, shape (height, width, 3); its long side is at most the
    engine's ``EngineInfo.frame_side`` (MAX_FRAME_SIDE unless the engine asks for more)."""

    rgb: NDArray[np.uint8]
    offset_ms: int
    """Position of the frame inside its unit (ms from the unit's start)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """What the model gets every second."""

    index: int
    """0 for the call's first unit, then one more per second of media."""
    start_ms: int
    """Start on the call's media clock in ms (``index * UNIT_MS``: derived from the sample
    count, never from wall time)."""
    audio: NDArray[np.float32]
    """16 kHz mono float32 in [-1, 1], shape (UNIT_SAMPLES,); gaps are silence."""
    frames: tuple[Frame, ...] = ()
    """The video frames sampled in this unit, oldest first (none for an audio-only call)."""
    captured_at: float = 0.0
    """Monotonic time when the unit's last sample arrived (for latency figures)."""
    missing_ms: int = 0
    """How much of the unit was filled with silence because media did not arrive."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What the model did with one unit."""

    listen: bool
    """True: the model listened to this unit; False: it spoke."""
    text: str = ""
    """Text the model said in this unit (a delta of its reply)."""
    audio: NDArray[np.float32] | None = None
    """24 kHz mono float32 speech for this unit, shape (n,) with n about
    OUTPUT_UNIT_SAMPLES; None while listening."""
    end_of_turn: bool = False
    """The model finished its turn with this unit."""
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
    frame_side: int = MAX_FRAME_SIDE
    """Longest side of the video frames the engine wants (pixels); frames are scaled down
    to it, never up."""


class DuplexSession(Protocol):
    """One call's state inside one model replica."""

    def step(self, unit: Unit) -> StepResult:
        """Feed one unit and decide; blocking, runs on the replica's thread.

        Raises EngineError when the step failed but the session can go on (the call reports
        it and feeds the next unit); any other exception is a bug the call reports the same
        way.  A call ends after several failed steps in a row."""
        ...

    def interrupt(self) -> None:
        """Barge-in: stop speaking now; the next unit listens.  Thread-safe, never blocks."""
        ...

    def close(self) -> None:
        """Full cleanup; afterwards the replica is ready for the next session.  If it raises,
        the pool takes the replica out of service and rebuilds it."""
        ...


@dataclass(frozen=True, slots=True)
class PartialUnit:
    """The start of a unit that is still being cut: what has been heard of it so far."""

    index: int
    """The unit this is the start of (its ``Unit`` comes later, once it is complete)."""
    audio: NDArray[np.float32]
    """16 kHz mono float32 from the unit's start, shape (n,), n < UNIT_SAMPLES; a later
    PartialUnit or the Unit of the same index starts with these same samples."""
    captured_at: float = 0.0
    """Monotonic time when its last sample arrived."""

    @property
    def start_ms(self) -> int:
        return self.index * UNIT_MS


@runtime_checkable
class EarlySession(Protocol):
    """A session that can start speaking inside a unit (optional; ``DuplexSession`` too).

    While the person pauses, the call hands the session the unit so far, every few tens of
    ms (``step_early``), so it can notice the end of a turn and answer before the unit is
    complete.  Then ``step`` gets the whole unit as usual; audio the session has already
    heard through ``step_early`` must not be heard twice.
    """

    def step_early(self, part: PartialUnit) -> StepResult:
        """Hear ``part``; listen=True when there is nothing to say yet, else the speech
        (and text) to play at once.  Blocking, on the replica's thread, and quick: a step
        of the unit is waiting behind it.  Errors as for ``step``."""
        ...


class Replica(Protocol):
    """One model copy.  All of its methods run on the one thread that owns it."""

    def warmup(self) -> None:
        """Load and exercise the model so the first call is not slow; raises
        EngineUnavailable when the model cannot run here."""
        ...

    def open_session(self, config: SessionConfig) -> DuplexSession:
        """Prepare a clean session (system prompt, voice); any exception means the call
        gets no session (EngineUnavailable for it)."""
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


@dataclass(frozen=True, slots=True)
class EngineBinding:
    """The engine side of one call: its session and the replica thread it must run on."""

    name: str
    """The engine's name (``EngineInfo.name``)."""
    session: DuplexSession
    executor: Executor
    """The replica's own thread: every call into ``session`` except ``interrupt`` runs here."""
    waited_s: float = 0.0
    """Seconds the call waited in the queue for a free replica."""
    frame_side: int = MAX_FRAME_SIDE
    """Longest side of the frames the session gets (``EngineInfo.frame_side``)."""


QueueCallback = Callable[[int, float, int], None]
"""Told (position from 1, estimated wait in seconds, queue length) while a call waits."""


class EngineSource(Protocol):
    """Where a call gets its engine session (``omni.pool.ReplicaPool.lend`` makes one)."""

    async def open(self, on_queue: QueueCallback) -> EngineBinding:
        """A session on a free replica, waiting in the queue if need be.

        Raises EngineBusy (the queue is full, or no replica works) or EngineUnavailable
        (the replica could not open a session)."""
        ...

    async def close(
        self, binding: EngineBinding | None, broken: str | None = None, *, hung: bool = False
    ) -> None:
        """Close the session (full cleanup, on the replica's thread) if one was opened, and
        give the replica or the place in the queue back.  ``broken`` (the reason) asks for
        the replica to be rebuilt; ``hung``: its thread is stuck in a step, so the session is
        not closed there and the replica is rebuilt on a fresh thread."""
        ...


MAX_STEP_AUDIO_SAMPLES = 4 * OUTPUT_UNIT_SAMPLES
"""Most speech one step may return (4 s at 24 kHz); more is a broken engine."""


def check_result(result: object) -> StepResult:
    """``result`` if it keeps the contract; raises EngineError saying what is wrong (a step
    that returns this counts as a failed step)."""
    if not isinstance(result, StepResult):
        raise EngineError(f"the step returned {type(result).__name__}, not a StepResult")
    if not isinstance(result.listen, bool | np.bool_):
        raise EngineError("StepResult.listen is not a bool")
    if not isinstance(result.text, str) or not isinstance(result.heard, str):
        raise EngineError("StepResult.text and .heard must be str")
    audio = result.audio
    if audio is not None:
        if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
            raise EngineError("StepResult.audio must be a 1-D float32 array (24 kHz mono)")
        if audio.size > MAX_STEP_AUDIO_SAMPLES:
            raise EngineError(f"StepResult.audio holds {audio.size} samples (at most 4 s)")
        if not np.isfinite(audio).all():
            raise EngineError("StepResult.audio holds NaN or infinite samples")
    for name, value in result.timings.items():
        if not isinstance(name, str) or not isinstance(value, int | float):
            raise EngineError("StepResult.timings must map str to milliseconds")
    return result


def require(condition: bool, message: str) -> None:
    """Settings checks: raise ValueError(message) unless ``condition`` holds.

    Messages start with the setting's name ("port must be ..."), so the settings loader can
    prefix its section."""
    if not condition:
        raise ValueError(message)


def silence(samples: int) -> NDArray[np.float32]:
    """A buffer of silence."""
    return np.zeros(samples, dtype=np.float32)

"""Engines for tests that need an engine to misbehave on purpose."""

from __future__ import annotations

import threading
import time

import numpy as np

from omni.api import OUTPUT_UNIT_SAMPLES, DuplexSession, EngineInfo, SessionConfig, StepResult, Unit


class ScriptedSession:
    """Speaks a tone on every unit from ``speak_from`` on; raises on units in ``fail_on``;
    takes ``step_s`` per step; records every unit it gets."""

    def __init__(self, owner: ScriptedEngine) -> None:
        self._owner = owner
        self.units: list[Unit] = []
        self.interrupted = threading.Event()
        self.closed = False

    def step(self, unit: Unit) -> StepResult:
        self.units.append(unit)
        owner = self._owner
        if owner.step_s:
            time.sleep(owner.step_s)
        if unit.index in owner.fail_on or owner.fail_always:
            raise RuntimeError(f"scripted failure on unit {unit.index}")
        if self.interrupted.is_set():
            self.interrupted.clear()
            owner.interrupted_units.append(unit.index)
            return StepResult(listen=True)
        if owner.speak_from is not None and unit.index >= owner.speak_from:
            t = np.arange(OUTPUT_UNIT_SAMPLES) / 24_000
            audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            return StepResult(
                listen=False, text=f"u{unit.index} ", audio=audio, timings={"fake": 1.0}
            )
        return StepResult(listen=True, timings={"fake": 1.0})

    def interrupt(self) -> None:
        self.interrupted.set()

    def close(self) -> None:
        self.closed = True
        self._owner.closed_sessions += 1
        if self._owner.fail_close:
            self._owner.fail_close -= 1
            raise RuntimeError("scripted cleanup failure")


class ScriptedReplica:
    def __init__(self, owner: ScriptedEngine) -> None:
        self._owner = owner

    def warmup(self) -> None:
        return None

    def open_session(self, config: SessionConfig) -> DuplexSession:
        self._owner.configs.append(config)
        session = ScriptedSession(self._owner)
        self._owner.sessions.append(session)
        return session

    def shutdown(self) -> None:
        return None


class ScriptedEngine:
    def __init__(
        self,
        replicas: int = 2,
        speak_from: int | None = None,
        fail_on: frozenset[int] = frozenset(),
        fail_always: bool = False,
        step_s: float = 0.0,
        fail_close: int = 0,
    ) -> None:
        self.fail_close = fail_close
        """How many session closes fail (the replica is then rebuilt)."""
        self.replicas_created = 0
        self.speak_from = speak_from
        self.fail_on = fail_on
        self.fail_always = fail_always
        self.step_s = step_s
        self.sessions: list[ScriptedSession] = []
        self.configs: list[SessionConfig] = []
        self.interrupted_units: list[int] = []
        self.closed_sessions = 0
        self._info = EngineInfo("scripted", "test engine", replicas)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def create_replica(self, index: int) -> ScriptedReplica:
        self.replicas_created += 1
        return ScriptedReplica(self)

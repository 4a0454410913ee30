"""Engines for tests that need an engine to misbehave on purpose."""

from __future__ import annotations

import threading
import time

import numpy as np

from omni.api import OUTPUT_UNIT_SAMPLES, DuplexSession, EngineInfo, SessionConfig, StepResult, Unit


class ScriptedSession:
    """Speaks a tone on every unit from ``speak_from`` on; raises on units in ``fail_on``;
    blocks its thread on units in ``hang_on`` (until the engine's ``release`` is set);
    returns a result that breaks the contract on units in ``malformed_on``; takes ``step_s``
    per step; records every unit it gets.  With ``fault_session`` set, the faults apply only
    to the session opened in that order (0 = the first)."""

    def __init__(self, owner: ScriptedEngine, number: int) -> None:
        self._owner = owner
        self._faulty = owner.fault_session is None or owner.fault_session == number
        self.units: list[Unit] = []
        self.interrupted = threading.Event()
        self.closed = False

    def step(self, unit: Unit) -> StepResult:
        self.units.append(unit)
        owner = self._owner
        if owner.step_s:
            time.sleep(owner.step_s)
        if self._faulty and (unit.index in owner.fail_on or owner.fail_always):
            raise RuntimeError(f"scripted failure on unit {unit.index}")
        if self._faulty and unit.index in owner.hang_on:
            owner.hung_steps += 1
            owner.release.wait()
            owner.returned_late += 1
        if self._faulty and unit.index in owner.malformed_on:
            bad = np.full(OUTPUT_UNIT_SAMPLES, np.nan, dtype=np.float32)
            return StepResult(listen=False, text="garbage", audio=bad)
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
        session = ScriptedSession(self._owner, len(self._owner.sessions))
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
        hang_on: frozenset[int] = frozenset(),
        malformed_on: frozenset[int] = frozenset(),
        fault_session: int | None = None,
    ) -> None:
        self.hang_on = hang_on
        self.malformed_on = malformed_on
        self.fault_session = fault_session
        self.release = threading.Event()
        """Set it to let hung steps return (at the end of a test)."""
        self.hung_steps = 0
        self.returned_late = 0
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

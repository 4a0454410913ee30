"""Sub-unit turn ends in a real call: an engine that can (``EarlySession``) hears the unit so
far while the person pauses, and the speech it answers with reaches the caller before that
unit is complete."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import numpy as np

from omni.api import (
    OUTPUT_RATE,
    DuplexSession,
    EngineInfo,
    PartialUnit,
    SessionConfig,
    StepResult,
    Unit,
)
from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, call_snapshot
from tests.support.media import rms, silence, speechlike

QUIET = int(0.3 * 16_000)


class PauseSession:
    """Answers with a tone on the first early step whose last 300 ms are quiet after the
    person was loud (a turn end it sees inside the unit); records what it hears."""

    def __init__(self, owner: EarlyEngine) -> None:
        self._owner = owner
        self._loud = False
        self._answered = False

    def step(self, unit: Unit) -> StepResult:
        self._owner.units.append(unit.index)
        self._loud = self._loud or rms(unit.audio) > 0.02
        return StepResult(listen=True)

    def step_early(self, part: PartialUnit) -> StepResult:
        self._owner.early.append((part.index, part.audio.size))
        self._loud = self._loud or rms(part.audio) > 0.02
        tail = part.audio[-QUIET:]
        if self._answered or not self._loud or tail.size < QUIET or rms(tail) > 0.005:
            return StepResult(listen=True)
        self._answered = True
        stepped = part.index in self._owner.units
        self._owner.answered.append((part.index, part.audio.size, stepped))
        t = np.arange(OUTPUT_RATE // 2) / OUTPUT_RATE
        tone = (0.3 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)
        return StepResult(listen=False, text="early", audio=tone, end_of_turn=True)

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        return None


class EarlyReplica:
    def __init__(self, owner: EarlyEngine) -> None:
        self._owner = owner

    def warmup(self) -> None:
        return None

    def open_session(self, config: SessionConfig) -> DuplexSession:
        return PauseSession(self._owner)

    def shutdown(self) -> None:
        return None


class EarlyEngine:
    def __init__(self) -> None:
        self.info = EngineInfo("early", "answers inside the unit", 2)
        self.units: list[int] = []
        self.early: list[tuple[int, int]] = []
        self.answered: list[tuple[int, int, bool]] = []

    def create_replica(self, index: int) -> EarlyReplica:
        return EarlyReplica(self)


async def test_speech_from_inside_a_unit_reaches_the_caller_before_the_unit_ends(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = EarlyEngine()
    server = await start_server(pool=ReplicaPool(engine))  # type: ignore[arg-type]
    caller = Caller(server.url)
    try:
        await caller.call(http)
        await caller.wait_for("unit", 5)
        # Talk for 1.5 s, starting at some point in a unit, then stay quiet.
        caller.player.play(np.concatenate([speechlike(1.5, seed=5), silence(3.0)]))
        deltas = await caller.wait_for("response.output_text.delta", 6)
        assert deltas[0]["delta"] == "early"
        assert len(engine.answered) == 1, "no early step answered"
        index, heard, stepped = engine.answered[0]
        # The answer came from the start of a unit, before that unit's own step.
        assert heard < 16_000 and not stepped
        # When the last frame of talk left the caller (its media clock, not a guess).
        sent = caller.player.sent_at
        talk_ended = next(at for at, pts in sent if pts >= sent[0][1] + int(1.5 * 48_000))
        async with asyncio.timeout(5):
            while not [c for at, c in caller.received if at > talk_ended and rms(c) > 0.05]:
                await asyncio.sleep(0.02)
        heard_at = next(at for at, c in caller.received if at > talk_ended and rms(c) > 0.05)
        # 300 ms of quiet, an early step every 40 ms of media, the way back: well under the
        # up to a unit (plus grace) a whole-unit engine would have waited.
        delay = heard_at - talk_ended
        assert delay < 1.0, f"first speech {delay:.2f} s after the talk ended"
        seen = len(engine.early)
        snapshot = await call_snapshot(http, server.url, caller.call_id or "")
        assert snapshot["counters"]["early_steps"] >= seen > 0
        sizes = [n for i, n in engine.early if i == index]
        assert all(b - a >= 640 for a, b in itertools.pairwise(sizes)), sizes
    finally:
        await caller.close()

"""What every engine must do, whichever model is behind it (omni/api.py), checked on every
engine that runs here: echo, minicpmo over its contract fake, llamacpp over the fake server."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from omni.api import (
    OUTPUT_UNIT_SAMPLES,
    DuplexSession,
    Replica,
    SessionConfig,
    StepResult,
)
from omni.echo import EchoConfig, echo_engine
from omni.llamacpp.engine import llamacpp_engine
from omni.minicpmo.engine import MiniCPMOEngine
from tests.llamacpp.helpers import config as llamacpp_config
from tests.minicpmo.helpers import FakeLoader, talk_then_quiet, unit
from tests.minicpmo.helpers import config as minicpmo_config
from tests.support.fake_llamacpp import FakeLlamaCppServer

ENGINES = ("echo", "minicpmo", "llamacpp")


@dataclass
class Case:
    name: str
    replica: Replica
    talk: list[NDArray[np.float32]]
    """Units that make this engine speak (a question, then quiet)."""


@pytest.fixture(params=ENGINES)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    stops: list[Callable[[], None]] = []
    name = str(request.param)
    replica: Replica
    if name == "echo":
        replica = echo_engine(EchoConfig(), 1).create_replica(0)
    elif name == "minicpmo":
        engine = MiniCPMOEngine(
            minicpmo_config(tmp_path, force_listen_count=0), loader=FakeLoader(turn_units=4)
        )
        replica = engine.create_replica(0)
    else:
        server = FakeLlamaCppServer(turn_units=4).start()
        stops.append(server.stop)
        replica = llamacpp_engine(llamacpp_config(tmp_path, server.url)).create_replica(0)
    replica.warmup()
    try:
        yield Case(name, replica, talk_then_quiet(2, 6))
    finally:
        replica.shutdown()
        for stop in stops:
            stop()


def _check(result: StepResult) -> None:
    assert isinstance(result, StepResult)
    assert isinstance(result.listen, bool)
    assert isinstance(result.text, str)
    assert isinstance(result.end_of_turn, bool)
    if result.listen:
        assert result.audio is None or result.audio.size == 0, "a listening unit is silent"
        assert result.text == ""
    if result.audio is not None:
        assert isinstance(result.audio, np.ndarray)
        assert result.audio.dtype == np.float32
        assert result.audio.ndim == 1, "mono"
        assert result.audio.size <= OUTPUT_UNIT_SAMPLES, "at most one unit of 24 kHz speech"
        assert np.all(np.isfinite(result.audio))
        assert float(np.max(np.abs(result.audio), initial=0.0)) <= 1.0
    for stage, value in result.timings.items():
        assert isinstance(stage, str)
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert math.isfinite(value) and value >= 0


def _steps(
    session: DuplexSession, chunks: list[NDArray[np.float32]], start: int
) -> list[StepResult]:
    results = []
    for i, chunk in enumerate(chunks):
        result = session.step(unit(start + i, chunk))
        _check(result)
        results.append(result)
    return results


def _until_speaking(case: Case, session: DuplexSession) -> int:
    results = _steps(session, case.talk, 0)
    spoke = [i for i, r in enumerate(results) if not r.listen and r.audio is not None]
    assert spoke, f"{case.name} never spoke"
    return len(results)


def test_steps_return_well_formed_results_and_speech(case: Case) -> None:
    session = case.replica.open_session(SessionConfig())
    try:
        results = _steps(session, case.talk + talk_then_quiet(0, 6), 0)
        speech = [r.audio for r in results if not r.listen and r.audio is not None]
        assert speech, "the engine answered"
        assert float(np.sqrt(np.mean(np.concatenate(speech) ** 2))) > 0.01, "audibly"
    finally:
        session.close()


def test_after_interrupt_nothing_of_the_interrupted_turn_is_said(case: Case) -> None:
    session = case.replica.open_session(SessionConfig())
    try:
        count = _steps_while_speaking(case, session)
        session.interrupt()
        after = _steps(session, talk_then_quiet(0, 3), count)
        assert after[0].listen, "the next unit listens"
        assert all(r.audio is None or r.audio.size == 0 for r in after)
    finally:
        session.close()


def _steps_while_speaking(case: Case, session: DuplexSession) -> int:
    """Step until the engine is mid-turn (it spoke and has not ended its turn)."""
    for i, chunk in enumerate(case.talk):
        result = session.step(unit(i, chunk))
        _check(result)
        if not result.listen and result.audio is not None and not result.end_of_turn:
            return i + 1
    pytest.fail(f"{case.name} never spoke mid-turn")


def test_close_then_open_gives_a_clean_session(case: Case) -> None:
    first = case.replica.open_session(SessionConfig())
    count = _steps_while_speaking(case, first)
    first.close()
    second = case.replica.open_session(SessionConfig())
    try:
        quiet = _steps(second, talk_then_quiet(0, 4), count)
        assert all(r.listen for r in quiet), "nothing of the previous call carries over"
        answered = _steps(second, case.talk, count + 4)
        assert any(not r.listen for r in answered), "and the new call works"
    finally:
        second.close()


def test_interrupt_from_another_thread_while_stepping_does_not_deadlock(case: Case) -> None:
    session = case.replica.open_session(SessionConfig())
    done = threading.Event()
    failures: list[BaseException] = []

    def steps() -> None:
        try:
            _steps(session, case.talk + talk_then_quiet(0, 4), 0)
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=steps, name="contract-steps")
    worker.start()
    while not done.is_set():
        began = time.perf_counter()
        session.interrupt()
        assert time.perf_counter() - began < 0.05, "interrupt never blocks"
        time.sleep(0.003)
    worker.join(10)
    assert not worker.is_alive()
    assert failures == []
    session.close()

"""The real MiniCPM-o 4.5 on a GPU: run where CUDA and a local copy of the weights exist.

Set OMNIRTC_MINICPMO_MODEL to the model folder (and optionally OMNIRTC_MINICPMO_VOICE to a
16-bit WAV) and run `pytest -m gpu`.  Skipped elsewhere, with the reason shown.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from omni.api import INPUT_RATE, OUTPUT_RATE, SessionConfig
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.engine import MiniCPMOEngine
from tests.minicpmo.helpers import run, talk_then_quiet, voice_file

pytestmark = pytest.mark.gpu

MODEL = os.environ.get("OMNIRTC_MINICPMO_MODEL", "")


def _why_not() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install -e '.[minicpmo]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if not MODEL or not Path(MODEL).is_dir():
        return "set OMNIRTC_MINICPMO_MODEL to a local folder holding MiniCPM-o 4.5"
    return None


@pytest.fixture(scope="module")
def gpu_replica(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    why = _why_not()
    if why:
        pytest.skip(why)
    voice = os.environ.get("OMNIRTC_MINICPMO_VOICE") or str(
        voice_file(tmp_path_factory.mktemp("voice"))
    )
    engine = MiniCPMOEngine(MiniCPMOConfig(model=MODEL, devices=("cuda:0",), voice=voice))
    replica = engine.create_replica(0)
    replica.warmup()
    yield replica
    replica.shutdown()


def test_real_model_listens_then_answers_speech(gpu_replica) -> None:  # type: ignore[no-untyped-def]
    session = gpu_replica.open_session(SessionConfig())
    try:
        results = run(session, talk_then_quiet(3, 8))
    finally:
        session.close()
    assert all(r.listen for r in results[:3]), "force_listen_count = 3"
    speaking = [r for r in results if not r.listen]
    assert speaking, "the model never spoke after three seconds of speech"
    for r in speaking:
        assert r.audio is None or r.audio.dtype == np.float32
    assert any(r.audio is not None and r.audio.size >= OUTPUT_RATE // 2 for r in speaking)
    assert all(r.timings["all"] < 5000 for r in results)


def test_cleanup_returns_gpu_memory(gpu_replica) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    session = gpu_replica.open_session(SessionConfig())
    run(session, talk_then_quiet(2, 4))
    session.close()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 256 * 2**20


def test_a_callers_voice_is_accepted(gpu_replica) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    clip = (0.05 * rng.standard_normal(3 * INPUT_RATE)).astype(np.float32)
    session = gpu_replica.open_session(SessionConfig(voice=clip))
    try:
        run(session, talk_then_quiet(1, 2))
    finally:
        session.close()

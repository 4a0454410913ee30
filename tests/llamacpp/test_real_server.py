"""The llamacpp engine against a real llama.cpp-omni server: run where one is running.

Set OMNIRTC_LLAMACPP_SERVER to its base URL (e.g. http://127.0.0.1:8081) and
OMNIRTC_LLAMACPP_MODEL_DIR to the MiniCPM-o 4.5 GGUF folder as the server sees it; when the
server runs elsewhere (another machine, or outside omnirtc's container), also
OMNIRTC_LLAMACPP_SHARED_DIR (a folder both see) and OMNIRTC_LLAMACPP_SERVER_SHARED_DIR (its
path on the server's side).  Run `pytest -m llamacpp`.  Skipped elsewhere, with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from omni.api import INPUT_RATE, OUTPUT_UNIT_SAMPLES, UNIT_SAMPLES, SessionConfig, StepResult
from omni.llamacpp.config import LlamaCppConfig
from omni.llamacpp.engine import LlamaCppReplica
from tests.lite.models import Speaker
from tests.minicpmo.helpers import unit

pytestmark = pytest.mark.llamacpp

SERVER = os.environ.get("OMNIRTC_LLAMACPP_SERVER", "")
MODEL_DIR = os.environ.get("OMNIRTC_LLAMACPP_MODEL_DIR", "")
SHARED = os.environ.get("OMNIRTC_LLAMACPP_SHARED_DIR", "")
SERVER_SHARED = os.environ.get("OMNIRTC_LLAMACPP_SERVER_SHARED_DIR", "")
QUESTION = "Hello! Can you tell me what the capital of France is?"


@pytest.fixture(scope="module")
def real_replica() -> Iterator[LlamaCppReplica]:
    if not SERVER:
        pytest.skip("set OMNIRTC_LLAMACPP_SERVER to a running llama.cpp-omni server's URL")
    if not MODEL_DIR:
        pytest.skip("set OMNIRTC_LLAMACPP_MODEL_DIR to the GGUF folder as the server sees it")
    config = LlamaCppConfig(
        servers=(SERVER,),
        model_dir=MODEL_DIR,
        shared_dir=SHARED,
        server_shared_dir=SERVER_SHARED,
        decode_timeout_s=30.0,
    )
    replica = LlamaCppReplica(config, 0)
    replica.warmup()
    try:
        yield replica
    finally:
        replica.shutdown()


def _question() -> np.ndarray:
    try:
        return Speaker().say(QUESTION, rate=INPUT_RATE)
    except Exception:  # Piper is not installed: any voiced sound still exercises the path
        from tests.support.media import speechlike

        return speechlike(3.0, rate=INPUT_RATE, seed=5)


def test_a_short_real_session_answers_a_question(real_replica: LlamaCppReplica) -> None:
    speech = _question()
    units = int(np.ceil(speech.size / UNIT_SAMPLES)) + 12
    audio = np.zeros(units * UNIT_SAMPLES, np.float32)
    audio[UNIT_SAMPLES : UNIT_SAMPLES + speech.size] = speech
    session = real_replica.open_session(SessionConfig())
    results: list[StepResult] = []
    try:
        for index in range(units):
            chunk = audio[index * UNIT_SAMPLES : (index + 1) * UNIT_SAMPLES]
            results.append(session.step(unit(index, chunk)))
    finally:
        session.close()
    speaking = [r for r in results if not r.listen]
    assert all(r.audio is None for r in results if r.listen)
    assert all(r.audio.size <= OUTPUT_UNIT_SAMPLES for r in speaking if r.audio is not None)
    assert speaking, "the model answered"
    text = "".join(r.text for r in speaking)
    speech_out = np.concatenate([r.audio for r in speaking if r.audio is not None])
    assert float(np.sqrt(np.mean(speech_out**2))) > 0.01, f"audible answer to: {text!r}"
    print(f"\nmodel said: {text!r} ({speech_out.size / 24_000:.1f} s of speech)")
    print("step ms:", [round(sum(r.timings.values())) for r in results])

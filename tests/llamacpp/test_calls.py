"""The llamacpp engine (over the fake llama.cpp-omni server) through whole aiortc calls: the
caller talks, the model answers with audible speech and text, barge-in silences it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from omni.llamacpp.engine import llamacpp_engine
from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.llamacpp.helpers import config
from tests.support.caller import Caller
from tests.support.fake_llamacpp import TONE_HZ, FakeLlamaCppServer
from tests.support.media import rms, silence, speechlike


@pytest.fixture
async def omni_server() -> AsyncIterator[FakeLlamaCppServer]:
    """Started off the loop; requested before start_server, so it stops after the app."""
    server = FakeLlamaCppServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def _pool(folder: Path, server: FakeLlamaCppServer, **changes: Any) -> ReplicaPool:
    return ReplicaPool(llamacpp_engine(config(folder, server.url, **changes)), max_queue=1)


def _tone_share(audio: np.ndarray) -> float:
    """How much of the audio's spectrum is the fake model's tone."""
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / 48_000)
    band = spectrum[(freqs > TONE_HZ - 10) & (freqs < TONE_HZ + 10)]
    return float(band.max() / max(spectrum.max(), 1e-9))


async def test_a_call_hears_the_model_answer(
    omni_server: FakeLlamaCppServer,
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    server = await start_server(pool=_pool(tmp_path, omni_server))
    caller = Caller(server.url)
    try:
        await caller.call(http)
        assert (await caller.wait_for("session.created", 5))[0]["engine"] == "llamacpp"
        caller.player.play(np.concatenate([speechlike(1.5, seed=4), silence(0.1)]))
        spoke_at = time.monotonic()
        texts = await caller.wait_for("response.output_text.delta", 10, count=3)
        assert [t["delta"] for t in texts[:3]] == ["word1 ", "word2 ", "word3 "]
        await asyncio.sleep(2.0)
        units = caller.of_type("unit")
        speaking = [u for u in units if u["state"] == "speak"]
        assert speaking[-1]["end_of_turn"] is True
        assert {"engine_prefill", "engine_decode"} <= set(units[-1]["timings"])
        back = caller.audio(since=spoke_at)
        assert rms(back) > 0.02, "audible speech came back"
        spectrum = np.abs(np.fft.rfft(back))
        assert abs(np.argmax(spectrum) * 48_000 / back.size - TONE_HZ) < 15, "the model's voice"
        heard = [u for u in omni_server.units if u["rms"] > 0.01]
        assert heard, "the server heard the caller"
        assert omni_server.deaf_units == 0
    finally:
        await caller.close()


async def test_barge_in_over_the_model_silences_it(
    omni_server: FakeLlamaCppServer,
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    omni_server.turn_units = 12
    omni_server.continue_after_break = True
    server = await start_server(pool=_pool(tmp_path, omni_server), call__barge_in_ms=300)
    caller = Caller(server.url)
    try:
        await caller.call(http)
        caller.player.play(np.concatenate([speechlike(1.5, seed=4), silence(0.1)]))
        await caller.wait_for("response.output_text.delta", 10, count=2)
        breaks = omni_server.breaks
        caller.player.play(speechlike(2.0, seed=9))
        interrupted = await caller.wait_for("response.interrupted", 4)
        assert interrupted[0]["reason"] == "barge_in"
        at = next(t for t, e in caller.events if e["type"] == "response.interrupted")
        await asyncio.sleep(3.0)
        assert omni_server.breaks > breaks, "the server was told to stop"
        after = [e for t, e in caller.events if t > at + 1.2 and e["type"] == "unit"]
        assert after, "units go on"
        assert all(u["state"] == "listen" for u in after), "the rest of the turn is muted"
        tail = caller.audio(since=at + 1.2)
        assert rms(tail) < 0.02 or _tone_share(tail) < 0.1, "no more model speech"
    finally:
        await caller.close()

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from tests.conftest import ServerFactory
from tests.support.caller import Caller
from tests.support.media import rms, silence, speechlike


async def test_echo_engine_says_the_utterance_back(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    try:
        await caller.call(http)
        created = await caller.wait_for("session.created", 5)
        assert created[0]["engine"] == "echo"
        await asyncio.sleep(0.5)
        speech = speechlike(2.0, seed=3)
        caller.player.play(np.concatenate([speech, silence(0.1)]))
        spoke_at = time.monotonic()
        await caller.wait_for("input.speech_started", 5)
        await caller.wait_for("input.speech_stopped", 6)
        deltas = await caller.wait_for("response.output_text.delta", 6)
        assert deltas[0]["delta"].startswith("[echo ")
        await asyncio.sleep(3.0)
        back = caller.audio(since=spoke_at + 2.0)
        assert rms(back) > 0.02, "no speech came back"
        first = caller.first_loud(spoke_at + 2.0)
        assert first is not None
        units = caller.of_type("unit")
        assert any(u["state"] == "speak" for u in units)
        assert all(u["index"] == i for i, u in enumerate(units))
        async with http.get(f"{server.url}/v1/calls/{caller.call_id}") as r:
            snapshot = await r.json()
        assert snapshot["state"] == "active"
        assert snapshot["counters"]["speech_out_ms"] > 1500
    finally:
        await caller.close()

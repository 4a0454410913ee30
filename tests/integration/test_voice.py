"""A voice reference clip sent with the offer: decoded, checked and handed to the engine."""

from __future__ import annotations

import base64
import io
import wave

import aiohttp
import numpy as np
import pytest

from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, make_offer
from tests.support.engines import ScriptedEngine
from tests.support.media import speechlike


def wav_bytes(seconds: float, rate: int = 22_050) -> bytes:
    pcm = (speechlike(seconds, rate=rate, seed=2) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm.tobytes())
    return buffer.getvalue()


async def test_the_engine_gets_the_callers_voice_at_16_khz(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine()
    server = await start_server(pool=ReplicaPool(engine))
    caller = Caller(server.url, session={"voice": base64.b64encode(wav_bytes(2.5)).decode()})
    try:
        await caller.call(http)
        await caller.wait_for("unit", 5)
        voice = engine.configs[0].voice
        assert voice is not None
        assert voice.dtype == np.float32
        assert abs(voice.size - 2.5 * 16_000) < 800
        assert float(np.sqrt(np.mean(voice**2))) > 0.02
    finally:
        await caller.close()


@pytest.mark.parametrize(
    ("voice", "message"),
    [
        ("not base64!!", "base64"),
        (base64.b64encode(b"just some text, not audio").decode(), "not an audio file"),
        (base64.b64encode(wav_bytes(0.4)).decode(), "shorter than 1 s"),
        (base64.b64encode(wav_bytes(31.0, rate=8_000)).decode(), "longer than 30 s"),
    ],
)
async def test_bad_voice_clips_are_refused(
    start_server: ServerFactory, http: aiohttp.ClientSession, voice: str, message: str
) -> None:
    server = await start_server()
    body = {"sdp": await make_offer(), "type": "offer", "session": {"voice": voice}}
    async with http.post(f"{server.url}/v1/calls", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "invalid_voice"
    assert message in error["message"]

"""The Python client package and its CLI against a running server: a real aiortc call that
says a file and keeps the answer, reconnection after a lost call, and refusals."""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from omnirtc_client import ClientError, OmniClient, file_audio
from tests.conftest import ServerFactory
from tests.support.caller import call_snapshot
from tests.support.media import silence, speechlike, write_wav

OMNIRTC = Path(sys.executable).parent / "omnirtc"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "robot_call.py"


async def test_the_cli_says_a_file_prints_the_events_and_writes_the_answer(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = await start_server()
    question, answer = tmp_path / "q.wav", tmp_path / "a.wav"
    write_wav(
        question, np.concatenate([speechlike(2.0, rate=48_000, seed=8), silence(0.3)]), 48_000
    )
    process = await asyncio.create_subprocess_exec(
        str(OMNIRTC),
        "call",
        server.url,
        "--wav",
        str(question),
        "--out",
        str(answer),
        "--answer-s",
        "6",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    assert "response.output_text.delta" in types, types
    assert "session.closed" not in types or types[-1] == "session.closed"
    with wave.open(str(answer)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48_000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    windows = pcm[: pcm.size // 960 * 960].reshape(-1, 960)
    loud_s = float((np.sqrt((windows**2).mean(axis=1)) > 0.02).sum()) * 0.02
    assert loud_s > 1.0, f"the echoed answer is in the file ({loud_s:.2f} s loud)"
    assert b"in call call_" in err


async def test_the_client_calls_again_after_a_lost_call_and_hangs_up_for_good(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(call__max_duration_s=2.0)
    wav = tmp_path / "q.wav"
    write_wav(wav, speechlike(1.0, rate=48_000, seed=3), 48_000)
    client = OmniClient(server.url, reconnect=2, reconnect_delay_s=0.2)
    try:
        first = await client.start(file_audio(wav))
        reconnected = await client.wait_for("client.reconnected", 15)
        assert reconnected["call_id"] != first
        assert client.calls[:2] == [first, reconnected["call_id"]]
        assert (await call_snapshot(http, server.url, first))["end_reason"] == "max_duration"
        await client.wait_for("session.created", 5)
    finally:
        await client.hangup()
    assert client.ended.is_set()
    last = await call_snapshot(http, server.url, client.calls[-1])
    assert last["state"] in ("ending", "ended")


async def test_a_refused_call_raises_with_the_servers_reason(
    start_server: ServerFactory,
) -> None:
    server = await start_server(auth__api_keys=[{"name": "a", "key": "a-key-0123456789abcdef"}])
    client = OmniClient(server.url)
    with pytest.raises(ClientError) as refused:
        await client.start()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    await client.hangup()
    allowed = OmniClient(server.url, token="a-key-0123456789abcdef")
    try:
        call_id = await allowed.start()
        assert call_id.startswith("call_")
    finally:
        await allowed.hangup()


async def test_the_robot_example_runs(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server()
    question = tmp_path / "q.wav"
    write_wav(
        question, np.concatenate([speechlike(1.5, rate=48_000, seed=5), silence(0.3)]), 48_000
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        server.url,
        "--wav",
        str(question),
        "--seconds",
        "7",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "in call call_" in text and "[echo" in text, text
    assert (tmp_path / "answer.wav").stat().st_size > 48_000 * 2

"""/v1/realtime (MiniCPM-o Realtime V1) driven by the official ``openbmb-realtime`` client, and
by a raw WebSocket where the test needs frames the official client never sends."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from numpy.typing import NDArray
from openbmb_realtime import (
    AudioDelta,
    AudioSession,
    Event,
    RealtimeClient,
    RealtimeError,
    SessionClosed,
    SessionQueued,
    SessionReady,
    TextDelta,
    TurnCompleted,
    VideoSession,
    WorkerAssigned,
)
from PIL import Image

from omni.api import MAX_FRAME_SIDE
from omni.pool import ReplicaPool
from tests.conftest import RunningServer, ServerFactory
from tests.support.caller import Caller
from tests.support.engines import ScriptedEngine
from tests.support.media import rms, speechlike

RATE = 16_000


def pcm(samples: NDArray[np.float32]) -> bytes:
    return samples.astype("<f4").tobytes()


def seconds(samples: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    return [samples[i : i + RATE] for i in range(0, samples.size, RATE)]


class Recorder:
    """Collects a session's events with their arrival times."""

    def __init__(self, session: AudioSession | VideoSession) -> None:
        self.events: list[tuple[float, Event]] = []
        self.task = asyncio.create_task(self._run(session))

    async def _run(self, session: AudioSession | VideoSession) -> None:
        async for item in session:
            self.events.append((time.monotonic(), item))

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def first(self, kind: type) -> float | None:
        return next((t for t, e in self.events if isinstance(e, kind)), None)

    async def wait(self, kind: type, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            assert time.monotonic() < deadline, f"no {kind.__name__} in {timeout} s"
            await asyncio.sleep(0.02)


def client(server: RunningServer) -> RealtimeClient:
    return RealtimeClient(api_key="sk-test", base_url=server.url, close_timeout=5.0)


async def stream(session: AudioSession, audio: NDArray[np.float32]) -> list[float]:
    """Send ``audio`` one second per input.append, paced like a microphone."""
    start = time.monotonic()
    sent = []
    for i, chunk in enumerate(seconds(audio)):
        await asyncio.sleep(max(0.0, start + i - time.monotonic()))
        await session.send_audio(pcm(chunk))
        sent.append(time.monotonic())
    return sent


async def test_echo_over_the_official_client(start_server: ServerFactory) -> None:
    server = await start_server()
    session = await client(server).audio.connect(
        model="minicpm-o-4.5-realtime", system_prompt="Say it back."
    )
    events = Recorder(session)
    assert session.id.startswith("rt_")
    speech = speechlike(2.0, rate=RATE, seed=3)
    audio = np.concatenate([speech, np.zeros(4 * RATE, dtype=np.float32)])
    sent = await stream(session, audio)
    await events.wait(TurnCompleted, 3)
    deltas = events.of(AudioDelta)
    assert deltas, "no audio came back"
    back = np.concatenate([np.frombuffer(d.audio, dtype="<f4") for d in deltas])
    # The echo says the 2 s utterance back at 24 kHz (with a little of the silence around it).
    assert 1.8 * 24_000 <= back.size <= 3.5 * 24_000
    assert rms(back) > 0.3 * rms(speech), (rms(back), rms(speech))
    assert any(t.text.startswith("[echo ") for t in events.of(TextDelta))
    first_audio = events.first(AudioDelta)
    assert first_audio is not None
    last_sent = max(t for t in sent if t <= first_audio)
    print(f"\nappend -> first audio delta: {(first_audio - last_sent) * 1000:.0f} ms")
    await session.close()
    await events.task
    closed = events.of(SessionClosed)
    assert closed and closed[0].reason == "user_stop"
    await _until(lambda: server.pool.free == server.pool.size, 5)


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_second_session_waits_in_the_queue(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine, max_queue=2))
    first = await client(server).audio.connect(model="m")
    waiting: list[Event] = []
    second_client = client(server)

    async def connect_second() -> AudioSession:
        session = await second_client.audio.connect(model="m")
        return session

    task = asyncio.create_task(connect_second())
    await asyncio.sleep(1.0)
    assert not task.done(), "the second session got a replica that is in use"
    assert server.pool.queued == 1
    await first.close()
    second = await asyncio.wait_for(task, 10)
    # The session's own queue (events before session.created are kept in its event queue).
    while not second._events.empty():
        waiting.append(second._events.get_nowait())  # type: ignore[arg-type]
    queued = [e for e in waiting if isinstance(e, SessionQueued)]
    assert queued and queued[0].position == 1 and queued[0].queue_length == 1
    kinds = [type(e) for e in waiting]
    assert kinds.index(SessionQueued) < kinds.index(WorkerAssigned) < kinds.index(SessionReady)
    await second.send_audio(pcm(np.zeros(RATE, dtype=np.float32)))
    await _until(lambda: len(engine.sessions) == 2 and engine.sessions[1].units, 5)
    await second.close()


@asynccontextmanager
async def raw_session(
    server: RunningServer, mode: str = "audio", init: dict[str, Any] | None = None
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, list[dict[str, Any]]]]:
    """A WebSocket that has been through queue_done, session.init and session.created."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{server.url}/v1/realtime?mode={mode}&model=m",
            headers={"Authorization": "Bearer sk-test"},
            protocols=("map.realtime",),
        ) as ws,
    ):
        assert ws.protocol == "map.realtime"
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "session.queue_done" for e in seen):
            seen.append(await ws.receive_json(timeout=5))
        await ws.send_json({"type": "session.init", "payload": init or {}})
        while not any(e["type"] == "session.created" for e in seen):
            seen.append(await ws.receive_json(timeout=5))
        yield ws, seen


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5
) -> list[dict[str, Any]]:
    got = []
    while True:
        message = await ws.receive_json(timeout=timeout)
        got.append(message)
        if message["type"] == kind:
            return got


def append(samples: NDArray[np.float32], **extra: Any) -> dict[str, Any]:
    body = {"audio": base64.b64encode(pcm(samples)).decode(), **extra}
    return {"type": "input.append", "input": body}


async def test_force_listen_silences_the_unit_it_comes_with(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1, speak_from=0)
    server = await start_server(pool=ReplicaPool(engine))
    async with raw_session(server) as (ws, _):
        tone = speechlike(1.0, rate=RATE)
        results: dict[int, str] = {}
        for i in range(4):
            started = time.monotonic()
            await ws.send_json(append(tone, force_listen=(i == 2)))
            for message in await receive_until(
                ws, "response.output_audio.delta" if i != 2 else "response.listen"
            ):
                if message["type"] == "response.output_audio.delta":
                    results[message["unit"]] = "audio"
                    samples = np.frombuffer(base64.b64decode(message["audio"]), dtype="<f4")
                    assert samples.size == 24_000 and rms(samples) > 0.1
                elif message["type"] == "response.listen":
                    results[message["unit"]] = "listen"
            await asyncio.sleep(max(0.0, started + 1 - time.monotonic()))
        assert results == {0: "audio", 1: "audio", 2: "listen", 3: "audio"}
        assert engine.interrupted_units == [2]


async def test_official_interrupt_reaches_the_engine(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1, speak_from=0)
    server = await start_server(pool=ReplicaPool(engine))
    session = await client(server).audio.connect(model="m")
    events = Recorder(session)
    chunk = pcm(speechlike(1.0, rate=RATE))
    await session.send_audio(chunk)
    await events.wait(AudioDelta, 5)
    session.interrupt()
    await asyncio.sleep(0.5)
    await session.send_audio(chunk)
    await events.wait(TurnCompleted, 5)
    await _until(lambda: engine.interrupted_units, 5)
    await session.close()


async def test_bad_frames_get_error_events_and_the_session_goes_on(
    start_server: ServerFactory,
) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine))
    async with raw_session(server) as (ws, _):
        bad: list[tuple[str | dict[str, Any], str]] = [
            ("not json", "invalid_json"),
            ("[1, 2]", "invalid_event"),
            ({"type": "response.create"}, "unknown_event"),
            ({"type": "input.append"}, "invalid_event"),
            ({"type": "input.append", "input": {"audio": "###"}}, "invalid_base64"),
            ({"type": "input.append", "input": {"audio": "AAAAAAA="}}, "invalid_audio"),
            (append(np.full(RATE, np.nan, dtype=np.float32)), "invalid_audio"),
            (append(np.zeros(3 * RATE, dtype=np.float32)), "audio_too_long"),
            (append(np.zeros(RATE, dtype=np.float32), force_listen="yes"), "invalid_event"),
            (append(np.zeros(10, dtype=np.float32), video_frames=["AAAA"]), "invalid_frame"),
            ({"type": "session.init", "payload": {}}, "already_initialized"),
        ]
        for frame, code in bad:
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_json(frame))
            reply = await ws.receive_json(timeout=5)
            assert reply == {
                "type": "error",
                "error": {"code": code, "message": reply["error"]["message"]},
            }
        await ws.send_json(append(np.zeros(RATE, dtype=np.float32)))
        listen = await receive_until(ws, "response.listen")
        assert listen[-1]["unit"] == 0
        assert len(engine.sessions[0].units) == 1
        await ws.send_json({"type": "session.close", "reason": "done"})
        closed = await receive_until(ws, "session.closed")
        assert closed[-1]["reason"] == "done"


async def test_a_vanished_client_frees_its_replica(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine))
    session = await client(server).audio.connect(model="m")
    await session.send_audio(pcm(np.zeros(RATE, dtype=np.float32)))
    assert server.pool.free == 0
    transport = session._socket.transport  # type: ignore[attr-defined]
    transport.abort()  # the client's process died: no close frame, the TCP connection drops
    await _until(lambda: server.pool.free == 1, 5)
    assert engine.sessions[0].closed
    again = await client(server).audio.connect(model="m")
    await again.close()


async def test_sessions_and_calls_share_max_calls(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__max_calls=1)
    session = await client(server).audio.connect(model="m")
    caller = Caller(server.url)
    try:
        sdp = await caller.offer()
        async with http.post(
            f"{server.url}/v1/calls", json={"sdp": sdp, "type": "offer", "session": {}}
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "busy"
        async with http.get(f"{server.url}/readyz") as response:
            assert (await response.json())["calls"] == 1
    finally:
        await caller.close()
    await session.close()
    async with http.get(f"{server.url}/readyz") as response:
        assert (await response.json())["calls"] == 0
    # And the other way round: a live WebRTC call leaves no room for a session.
    caller = Caller(server.url)
    try:
        await caller.call(http)
        with pytest.raises(RealtimeError) as refused:
            await client(server).audio.connect(model="m")
        assert refused.value.code == "busy"
    finally:
        await caller.close()


async def test_a_webrtc_call_and_a_websocket_session_at_once(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    session = await client(server).audio.connect(model="m")
    events = Recorder(session)
    try:
        await caller.call(http)
        await caller.wait_for("session.created", 5)
        speech = speechlike(1.5, rate=RATE, seed=5)
        audio = np.concatenate([speech, np.zeros(int(3.5 * RATE), dtype=np.float32)])
        caller.player.play(np.concatenate([speechlike(1.5, seed=6), np.zeros(48_000)]))
        await stream(session, audio)
        await events.wait(AudioDelta, 3)
        await caller.wait_for("response.output_text.delta", 5)
        back = np.concatenate([np.frombuffer(d.audio, dtype="<f4") for d in events.of(AudioDelta)])
        assert rms(back) > 0.02
    finally:
        await caller.close()
        await session.close()


async def test_video_frames_reach_the_engine_scaled(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine))
    session = await client(server).video.connect(model="m")
    image = Image.new("RGB", (1280, 720), (200, 30, 40))
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG")
    for _ in range(2):
        await session.send_audio_video(pcm(np.zeros(RATE, dtype=np.float32)), jpeg.getvalue())
        await asyncio.sleep(1.0)
    await _until(lambda: engine.sessions and len(engine.sessions[0].units) >= 2, 5)
    frames = [f for u in engine.sessions[0].units for f in u.frames]
    assert frames
    height, width, _ = frames[0].rgb.shape
    assert max(height, width) <= MAX_FRAME_SIDE and width > height
    red, green, blue = frames[0].rgb.reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 80 and blue < 80
    await session.close()


async def test_a_client_faster_than_real_time_is_paced(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine), realtime_ws__max_ahead_s=1.0)
    async with raw_session(server) as (ws, _):
        start = time.monotonic()
        for _ in range(6):  # six seconds of audio at once
            await ws.send_json(append(np.zeros(RATE, dtype=np.float32)))
        units: dict[int, float] = {}
        while len(units) < 6:
            message = await ws.receive_json(timeout=10)
            assert message["type"] != "error", message
            if message["type"] == "response.listen":
                units[message["unit"]] = time.monotonic() - start
        assert sorted(units) == list(range(6)), "a unit was dropped"
        # Paced to real time (1 s ahead at most): the sixth second is heard ~4 s in.
        assert units[5] >= 3.5
        assert len(engine.sessions[0].units) == 6


async def test_refusals_are_error_events(start_server: ServerFactory) -> None:
    engine = ScriptedEngine(replicas=1)
    server = await start_server(pool=ReplicaPool(engine, max_queue=0))
    first = await client(server).audio.connect(model="m")
    with pytest.raises(RealtimeError) as refused:
        await client(server).audio.connect(model="m")
    assert refused.value.code == "busy"
    await first.close()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/v1/realtime?mode=radio") as ws,
    ):
        reply = await ws.receive_json(timeout=5)
        assert reply["error"]["code"] == "invalid_mode"
        assert json.loads((await ws.receive()).data)["type"] == "session.closed"


async def test_a_message_over_the_limit_closes_only_its_session(
    start_server: ServerFactory,
) -> None:
    engine = ScriptedEngine(replicas=2)
    server = await start_server(pool=ReplicaPool(engine), realtime_ws__max_message_bytes=128 * 1024)
    other = await client(server).audio.connect(model="m")
    async with raw_session(server) as (ws, _):
        await ws.send_str("x" * (200 * 1024))
        message = await ws.receive(timeout=5)
        while message.type is aiohttp.WSMsgType.TEXT:
            message = await ws.receive(timeout=5)
        assert ws.close_code == 1009
    await _until(lambda: server.pool.free == 1, 5)
    await other.send_audio(pcm(np.zeros(RATE, dtype=np.float32)))
    await _until(lambda: len(engine.sessions) == 2 and engine.sessions[0].units, 5)
    await other.close()

"""Whole calls with real aiortc peers: ending, vanishing, concurrency, loopback, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, call_snapshot, readyz, wait_ended
from tests.support.engines import ScriptedEngine
from tests.support.media import rms, silence, speechlike, tone

ROOT = Path(__file__).resolve().parents[2]


async def test_delete_ends_the_call_and_frees_its_replica(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__max_calls=2)
    caller = Caller(server.url)
    try:
        await caller.call(http)
        assert (await readyz(http, server.url))["replicas_free"] == 1
        started = time.monotonic()
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
        assert time.monotonic() - started < 2.0
        snap = await call_snapshot(http, server.url, caller.call_id or "")
        assert snap["state"] == "ended"
        assert snap["end_reason"] == "deleted"
        ready = await readyz(http, server.url)
        assert ready["calls"] == 0
        assert ready["replicas_free"] == 2
        await caller.wait_for("session.closed", 2)
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
    finally:
        await caller.close()


async def test_hang_up_ends_the_call_at_once(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    await caller.call(http)
    call_id = caller.call_id or ""
    await caller.close()
    snap = await wait_ended(http, server.url, call_id, timeout=3)
    assert snap["end_reason"] == "connection_closed"
    assert (await readyz(http, server.url))["calls"] == 0


async def test_a_vanished_client_is_noticed_and_freed(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(call__idle_timeout_s=2.0)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.vanishing_client",
        server.url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            call_id = (await process.stdout.readline()).decode().strip()
        assert call_id.startswith("call_")
        await asyncio.sleep(1.5)
        assert (await call_snapshot(http, server.url, call_id))["state"] == "active"
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        snap = await wait_ended(http, server.url, call_id, timeout=8)
        assert time.monotonic() - killed < 2.0 + 3.0
        assert snap["end_reason"] == "client_gone"
        assert snap["counters"]["audio_in_ms"] > 1000
        assert (await readyz(http, server.url))["replicas_free"] == server.pool.size
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_two_calls_at_once_are_independent(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    callers = [Caller(server.url), Caller(server.url)]
    try:
        await asyncio.gather(*(c.call(http) for c in callers))
        assert callers[0].call_id != callers[1].call_id
        await asyncio.sleep(0.3)
        callers[0].player.play(np.concatenate([speechlike(1.0, seed=5), silence(0.2)]))
        callers[1].player.play(np.concatenate([speechlike(2.5, seed=6), silence(0.2)]))
        texts = await asyncio.gather(
            *(c.wait_for("response.output_text.delta", 8) for c in callers)
        )
        seconds = [float(t[0]["delta"].split()[1]) for t in texts]
        assert 0.9 <= seconds[0] <= 1.6
        assert 2.3 <= seconds[1] <= 3.1
        ready = await readyz(http, server.url)
        assert ready["calls"] == 2
    finally:
        await asyncio.gather(*(c.close() for c in callers))


async def test_loopback_mode_returns_audio_at_once(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url, session={"mode": "loopback"})
    try:
        await caller.call(http)
        created = await caller.wait_for("session.created", 5)
        assert created[0]["mode"] == "loopback"
        await asyncio.sleep(0.5)
        sent_at = time.monotonic()
        caller.player.play(tone(0.5, 800))
        await asyncio.sleep(1.5)
        first = caller.first_loud(sent_at)
        assert first is not None, "the tone did not come back"
        assert first - sent_at < 0.5
        back = caller.audio(since=sent_at)
        spectrum = np.abs(np.fft.rfft(back))
        peak_hz = np.argmax(spectrum) * 48_000 / back.size
        assert abs(peak_hz - 800) < 20
        assert not caller.of_type("unit"), "loopback must bypass the unit loop"
        snap = await call_snapshot(http, server.url, caller.call_id or "")
        assert snap["engine"] == "loopback"
    finally:
        await caller.close()


async def test_ping_pong_and_bad_client_messages(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    try:
        await caller.call(http)
        caller.send({"type": "ping", "id": 7, "t": 123.5})
        caller.channel.send("{nope")
        caller.send({"type": "dance"})
        pongs = await caller.wait_for("pong", 3)
        assert pongs[0] == {"type": "pong", "id": 7, "t": 123.5}
        errors = await caller.wait_for("error", 3, count=2)
        assert {e["code"] for e in errors} == {"invalid_json", "unknown_event"}
        assert (await call_snapshot(http, server.url, caller.call_id or ""))["state"] == "active"
    finally:
        await caller.close()


def _scripted_pool(engine: ScriptedEngine) -> ReplicaPool:
    return ReplicaPool(engine)


async def test_barge_in_interrupts_and_clears_playout(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(speak_from=1)
    server = await start_server(pool=_scripted_pool(engine), call__barge_in_ms=300)
    caller = Caller(server.url)
    try:
        await caller.call(http)
        await caller.wait_for("response.output_text.delta", 6)
        await asyncio.sleep(1.0)
        assert rms(caller.audio(since=time.monotonic() - 0.5)) > 0.05, "service should be talking"
        talk_at = time.monotonic()
        caller.player.play(speechlike(2.0, seed=9))
        interrupted = await caller.wait_for("response.interrupted", 3)
        event_at = next(t for t, e in caller.events if e["type"] == "response.interrupted")
        assert interrupted[0]["reason"] == "barge_in"
        assert event_at - talk_at < 1.5
        assert engine.sessions[0].units, "engine got units"
    finally:
        await caller.close()


async def test_client_cancel_interrupts(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(speak_from=0)
    server = await start_server(pool=_scripted_pool(engine))
    caller = Caller(server.url)
    try:
        await caller.call(http)
        await caller.wait_for("response.output_text.delta", 6)
        await asyncio.sleep(0.5)
        caller.send({"type": "response.cancel"})
        event = (await caller.wait_for("response.interrupted", 3))[0]
        assert event["reason"] == "client_cancel"
        assert event["cleared_ms"] > 0
        cancelled_at = next(t for t, e in caller.events if e["type"] == "response.interrupted")
        await asyncio.sleep(0.6)
        quiet = caller.audio(since=cancelled_at + 0.25)
        quiet = quiet[: int(0.3 * 48_000)]
        assert rms(quiet) < 0.02, "speech went on after the cancel"
    finally:
        await caller.close()


async def test_video_frames_reach_the_engine(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine()
    server = await start_server(pool=_scripted_pool(engine), call__video_frames_per_unit=2)
    caller = Caller(server.url, video=True)
    try:
        await caller.call(http)
        await caller.wait_for("unit", 8, count=3)
        units = engine.sessions[0].units
        with_frames = [u for u in units if u.frames]
        assert with_frames, "no unit carried video frames"
        frame = with_frames[-1].frames[-1]
        assert frame.rgb.shape == (240, 320, 3)
        r, g, b = frame.rgb.reshape(-1, 3).mean(axis=0)
        assert r > 150 and g < 80 and b < 80, (r, g, b)
        assert all(len(u.frames) <= 2 for u in units)
        assert all(0 <= f.offset_ms < 1000 for u in units for f in u.frames)
        assert all(u.audio.shape == (16_000,) for u in units)
    finally:
        await caller.close()


async def test_an_engine_slower_than_real_time_keeps_the_call_on_its_clock(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(step_s=1.6, speak_from=0)
    server = await start_server(pool=_scripted_pool(engine), call__max_pending_units=1)
    caller = Caller(server.url)
    try:
        await caller.call(http)
        await asyncio.sleep(8.0)
        units = caller.of_type("unit")
        assert len(units) >= 3
        assert sum(u["dropped_units"] for u in units) >= 1, "overrun is reported"
        indices = [u["index"] for u in units]
        assert indices == sorted(indices)
        assert indices[-1] >= len(units), "units were skipped, not queued up"
        assert max(u["timings"]["late_ms"] for u in units) < 3000, "the lag does not grow"
        assert all(u["timings"]["step_ms"] >= 1500 for u in units)
        snap = await call_snapshot(http, server.url, caller.call_id or "")
        assert snap["counters"]["dropped_units"] >= 1
        assert snap["state"] == "active"
    finally:
        await caller.close()

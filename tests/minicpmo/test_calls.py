"""The MiniCPM-o engine (over the contract fake) through whole aiortc calls: speech both ways,
the replica queue, barge-in, and cleanup between two calls on one replica."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np

from omni.minicpmo.engine import MiniCPMOEngine
from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.minicpmo.helpers import FakeLoader, config, duplex_of
from tests.support.caller import Caller
from tests.support.media import rms, silence, speechlike


def _pool(folder: Path, loader: FakeLoader, max_queue: int = 2, **changes: object) -> ReplicaPool:
    engine = MiniCPMOEngine(config(folder, force_listen_count=0, **changes), loader=loader)
    return ReplicaPool(engine, max_queue=max_queue)


async def test_a_call_hears_the_model_speak(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    loader = FakeLoader()
    server = await start_server(pool=_pool(tmp_path, loader))
    caller = Caller(server.url)
    try:
        await caller.call(http)
        assert (await caller.wait_for("session.created", 5))[0]["engine"] == "minicpmo"
        caller.player.play(np.concatenate([speechlike(1.5, seed=4), silence(0.1)]))
        spoke_at = time.monotonic()
        texts = await caller.wait_for("response.output_text.delta", 8, count=3)
        assert all(t["delta"].startswith("word") for t in texts[:3])
        units = await caller.wait_for_unit(texts[2]["unit"], 5)
        assert [u["end_of_turn"] for u in units if u["state"] == "speak"][-1] is True
        assert "engine_llm" in units[-1]["timings"]
        await asyncio.sleep(1.5)
        back = caller.audio(since=spoke_at)
        spectrum = np.abs(np.fft.rfft(back))
        assert abs(np.argmax(spectrum) * 48_000 / back.size - 330) < 15, "the model's tone"
        prefills = duplex_of(loader).prefill_calls
        assert prefills[-1]["samples"] == 16_000
    finally:
        await caller.close()


async def test_calls_wait_in_the_queue_for_the_one_replica(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    loader = FakeLoader()
    server = await start_server(pool=_pool(tmp_path, loader, max_queue=1))
    first, second, third = Caller(server.url), Caller(server.url), Caller(server.url)
    try:
        await first.call(http)
        await first.wait_for("unit", 5)
        await second.call(http)
        queued = await second.wait_for("session.queued", 5)
        assert queued[0]["position"] == 1
        assert queued[0]["queue_length"] == 1
        assert queued[0]["estimated_wait_s"] > 0
        async with http.get(f"{server.url}/readyz") as r:
            ready = await r.json()
        assert ready["queued"] == 1
        assert ready["replicas_free"] == 0
        offer = await third.offer()
        async with http.post(f"{server.url}/v1/calls", json={"sdp": offer, "type": "offer"}) as r:
            assert r.status == 503
            assert "Retry-After" in r.headers
            assert (await r.json())["error"]["code"] == "busy"
        await asyncio.sleep(1.5)
        assert not second.of_type("unit"), "a queued call has no units yet"
        async with http.delete(f"{server.url}/v1/calls/{first.call_id}") as r:
            assert r.status == 204
        done = await second.wait_for("session.queue_done", 5)
        assert done[0]["waited_s"] > 1.0
        units = await second.wait_for("unit", 5)
        assert units[0]["index"] == 0
        duplex = duplex_of(loader)
        assert duplex.contaminated == [], "the replica was cleaned between the two calls"
    finally:
        await asyncio.gather(first.close(), second.close(), third.close())


async def test_a_queued_caller_that_hangs_up_leaves_the_queue(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(pool=_pool(tmp_path, FakeLoader(), max_queue=1))
    first, second = Caller(server.url), Caller(server.url)
    try:
        await first.call(http)
        await second.call(http)
        await second.wait_for("session.queued", 5)
        async with http.delete(f"{server.url}/v1/calls/{second.call_id}") as r:
            assert r.status == 204
        async with http.get(f"{server.url}/readyz") as r:
            assert (await r.json())["queued"] == 0
        async with http.get(f"{server.url}/v1/calls/{first.call_id}") as r:
            assert (await r.json())["state"] == "active"
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_barge_in_over_the_model_silences_it_within_a_unit(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    loader = FakeLoader(turn_units=12)
    server = await start_server(pool=_pool(tmp_path, loader), call__barge_in_ms=300)
    caller = Caller(server.url)
    try:
        await caller.call(http)
        caller.player.play(np.concatenate([speechlike(1.5, seed=4), silence(0.1)]))
        await caller.wait_for("response.output_text.delta", 8, count=2)
        caller.player.play(speechlike(2.0, seed=9))
        interrupted = await caller.wait_for("response.interrupted", 3)
        assert interrupted[0]["reason"] == "barge_in"
        at = next(t for t, e in caller.events if e["type"] == "response.interrupted")
        await asyncio.sleep(2.5)
        after = [e for t, e in caller.events if t > at + 1.2 and e["type"] == "unit"]
        assert after, "units go on"
        assert all(u["state"] == "listen" for u in after), "the rest of the turn is muted"
        tail = caller.audio(since=at + 1.2)
        spectrum = np.abs(np.fft.rfft(tail))
        freqs = np.fft.rfftfreq(tail.size, 1 / 48_000)
        band = spectrum[(freqs > 320) & (freqs < 340)]
        assert rms(tail) < 0.05 or band.max() < 0.1 * spectrum.max(), "no more model speech"
    finally:
        await caller.close()

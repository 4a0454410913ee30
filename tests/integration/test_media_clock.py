"""Units follow the sender's media clock: DTX silence is silence, a drifting clock is absorbed."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from tests.conftest import ServerFactory
from tests.support.caller import Caller, call_snapshot
from tests.support.dtx import use_dtx
from tests.support.media import silence, speechlike


async def test_dtx_silence_is_silence_not_loss(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A caller with Opus DTX sends almost nothing while it is quiet: those units are neither
    missing audio nor waited for past their due time."""
    server = await start_server()
    caller = Caller(server.url)
    sender = next(s for s in caller.pc.getSenders() if s.track is caller.player)
    encoder = use_dtx(sender)
    talk = np.concatenate([speechlike(1.5, seed=7), silence(0.2)])
    try:
        await caller.call(http)
        await asyncio.sleep(1.0)
        caller.player.play(talk)
        spoken = await caller.wait_for("response.output_text.delta", 8)
        quiet_from = (await caller.wait_for_unit(spoken[0]["unit"], 5))[-1]["index"] + 1
        await asyncio.sleep(5.0)
        assert encoder.skipped > 150, "the client did not go quiet with DTX"
        quiet = [u for u in caller.of_type("unit") if u["index"] >= quiet_from]
        assert len(quiet) >= 4
        missing = [u["missing_ms"] for u in quiet]
        assert max(missing) < 50, f"DTX silence was taken for missing audio: {missing}"
        late = sorted(u["timings"]["late_ms"] for u in quiet)
        assert late[len(late) // 2] < 80, f"quiet units were waited for: late_ms {late}"
        counters = (await call_snapshot(http, server.url, caller.call_id or ""))["counters"]
        assert counters["audio_dtx_ms"] > 3000, counters
        assert counters["audio_lost_ms"] < 100, counters
    finally:
        await caller.close()


async def test_a_slow_sender_clock_loses_nothing_and_never_barges_in(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A sender whose clock runs 2 % slow: its units arrive a little later each second."""
    server = await start_server()
    caller = Caller(server.url)
    caller.player.clock_scale = 1.02
    talk = np.concatenate(
        [np.concatenate([speechlike(1.2, seed=20 + i), silence(2.8)]) for i in range(3)]
    )
    try:
        await caller.call(http)
        started = time.monotonic()
        caller.player.play(talk)
        await caller.wait_for("response.output_text.delta", 20, count=3)
        while caller.player.pending_s > 0:
            await asyncio.sleep(0.1)
        assert time.monotonic() - started > 12.0
        units = caller.of_type("unit")
        missing = sum(u["missing_ms"] for u in units[1:])
        assert missing < 200, (
            f"{missing} ms of units went missing: {[u['missing_ms'] for u in units]}"
        )
        counters = (await call_snapshot(http, server.url, caller.call_id or ""))["counters"]
        assert counters["late_audio_samples"] < 1600, counters
        assert counters["interrupts"] == 0, counters
        assert not caller.of_type("response.interrupted")
    finally:
        await caller.close()

"""The engine fault policy, in real calls: an engine that raises, hangs past the step
deadline, or returns results that break the contract harms only its own call, and its
replica comes back (realtime/unit_loop.py states the policy)."""

from __future__ import annotations

import asyncio

import aiohttp

from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, call_snapshot, readyz, wait_ended
from tests.support.engines import ScriptedEngine


async def _wait_free(http: aiohttp.ClientSession, url: str, free: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while (await readyz(http, url))["replicas_free"] != free:
            await asyncio.sleep(0.1)


async def _units_during(caller: Caller, seconds: float) -> int:
    before = len(caller.of_type("unit"))
    await asyncio.sleep(seconds)
    return len(caller.of_type("unit")) - before


async def test_engine_errors_are_reported_and_other_calls_go_on(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(fail_on=frozenset({1}))
    server = await start_server(pool=ReplicaPool(engine))
    caller = Caller(server.url)
    try:
        await caller.call(http)
        errors = await caller.wait_for("error", 6)
        assert errors[0]["code"] == "engine_error"
        assert "unit 1" in errors[0]["message"]
        units = await caller.wait_for("unit", 6, count=3)
        assert [u["index"] for u in units[:2]] == [0, 2]
        assert (await call_snapshot(http, server.url, caller.call_id or ""))["state"] == "active"
    finally:
        await caller.close()


async def test_an_engine_that_always_fails_ends_only_its_call_and_is_rebuilt(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(fail_always=True)
    server = await start_server(pool=ReplicaPool(engine))
    caller = Caller(server.url)
    loop_caller = Caller(server.url, session={"mode": "loopback"})
    try:
        await asyncio.gather(caller.call(http), loop_caller.call(http))
        snap = await wait_ended(http, server.url, caller.call_id or "", timeout=10)
        assert snap["end_reason"] == "engine_error"
        assert engine.closed_sessions == 1
        closed = await caller.wait_for("session.closed", 3)
        assert closed[0]["reason"] == "engine_error"
        assert (await call_snapshot(http, server.url, loop_caller.call_id or ""))[
            "state"
        ] == "active"
        await _wait_free(http, server.url, 2, timeout=10)
        assert engine.replicas_created == 3, "the failing session's replica was rebuilt"
    finally:
        await asyncio.gather(caller.close(), loop_caller.close())


async def test_a_hung_step_ends_its_call_and_the_replica_comes_back_on_a_new_thread(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(hang_on=frozenset({2}), fault_session=0)
    server = await start_server(pool=ReplicaPool(engine), call__step_timeout_s=2.0)
    hung, other = Caller(server.url), Caller(server.url)
    try:
        await hung.call(http)
        await hung.wait_for("unit", 4)
        await other.call(http)
        await other.wait_for("unit", 4)
        errors = await hung.wait_for("error", 8)
        assert errors[0]["code"] == "engine_timeout", errors
        assert "unit 2" in errors[0]["message"]
        snap = await wait_ended(http, server.url, hung.call_id or "", timeout=5)
        assert snap["end_reason"] == "engine_timeout"
        assert engine.hung_steps == 1 and engine.returned_late == 0, "the step is still stuck"
        # The other call never noticed, and the stuck replica is rebuilt on a fresh thread.
        assert await _units_during(other, 2.5) >= 2
        await _wait_free(http, server.url, 1, timeout=10)
        assert engine.replicas_created == 3
        third = Caller(server.url)
        try:
            await third.call(http)
            units = await third.wait_for("unit", 5, count=3)
            assert [u["index"] for u in units[:3]] == [0, 1, 2]
        finally:
            await third.close()
        other_snap = await call_snapshot(http, server.url, other.call_id or "")
        assert other_snap["state"] == "active"
        assert other_snap["counters"]["engine_errors"] == 0
    finally:
        engine.release.set()
        await asyncio.gather(hung.close(), other.close())


async def test_malformed_results_are_errors_and_end_only_their_call(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(malformed_on=frozenset(range(1, 100)), fault_session=0, speak_from=0)
    server = await start_server(pool=ReplicaPool(engine))
    bad, good = Caller(server.url), Caller(server.url)
    try:
        await bad.call(http)
        await bad.wait_for("unit", 4)
        await good.call(http)
        errors = await bad.wait_for("error", 8, count=4)
        assert [e["code"] for e in errors[:4]] == ["engine_error"] * 4
        assert all("NaN" in e["message"] for e in errors[:3]), errors
        snap = await wait_ended(http, server.url, bad.call_id or "", timeout=5)
        assert snap["end_reason"] == "engine_error"
        assert all(e["delta"] != "garbage" for e in bad.of_type("response.output_text.delta")), (
            "a malformed result never reaches the client"
        )
        texts = await good.wait_for("response.output_text.delta", 6, count=2)
        assert all(t["delta"] != "garbage" for t in texts)
        await _wait_free(http, server.url, 1, timeout=10)
        assert engine.replicas_created == 3
    finally:
        await asyncio.gather(bad.close(), good.close())

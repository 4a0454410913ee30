"""What a demanding user (or a hostile client) does to the service, and what must not happen."""

from __future__ import annotations

import asyncio

import aiohttp

from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, make_offer
from tests.support.engines import ScriptedEngine


async def test_hostile_data_channel_messages_do_not_break_the_call(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    try:
        await caller.call(http)
        caller.channel.send('{"type":"ping","t":1' + "0" * 400 + "}")
        caller.channel.send("[" * 5000 + "]" * 5000)
        caller.send({"type": "ping", "t": 1.5, "id": "still-here"})
        errors = await caller.wait_for("error", 3, count=2)
        assert {e["code"] for e in errors} == {"invalid_event", "invalid_json"}
        pong = await caller.wait_for("pong", 3)
        assert pong[0]["id"] == "still-here"
        async with http.get(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert (await r.json())["state"] == "active"
    finally:
        await caller.close()


async def test_deeply_nested_json_is_a_400(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    body = ("[" * 6000 + "]" * 6000).encode()
    async with http.post(
        f"{server.url}/v1/calls", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"


async def test_concurrent_offers_never_overbook_the_replicas(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(pool=ReplicaPool(ScriptedEngine(replicas=1), max_queue=1))
    offers = [await make_offer() for _ in range(5)]
    responses = await asyncio.gather(
        *(http.post(f"{server.url}/v1/calls", json={"sdp": o, "type": "offer"}) for o in offers)
    )
    statuses = sorted(r.status for r in responses)
    for r in responses:
        r.release()
    assert statuses == [201, 201, 503, 503, 503], "one call on the replica, one in the queue"
    async with http.get(f"{server.url}/readyz") as r:
        ready = await r.json()
    assert ready["replicas_free"] == 0
    assert ready["queued"] == 1


async def test_a_replica_whose_cleanup_fails_is_rebuilt(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    engine = ScriptedEngine(replicas=1, fail_close=1)
    server = await start_server(pool=ReplicaPool(engine, max_queue=1))
    first = Caller(server.url)
    try:
        await first.call(http)
        await first.wait_for("unit", 5)
    finally:
        await first.close()
    async with asyncio.timeout(10):
        while True:
            async with http.get(f"{server.url}/readyz") as r:
                ready = await r.json()
            if engine.replicas_created >= 2 and ready["replicas_free"] == 1:
                break
            await asyncio.sleep(0.1)
    assert r.status == 200
    second = Caller(server.url)
    try:
        await second.call(http)
        units = await second.wait_for("unit", 5)
        assert units[0]["index"] == 0
    finally:
        await second.close()

"""Gateways, workers and a real Redis: admission races, a dead worker, a restarted Redis,
calls spread over worker processes.  Media flows between each caller and its worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time

import aiohttp
from aiortc import RTCSessionDescription

from signaling.cluster.registry import RedisRegistry
from tests.integration.test_whip import _fragment, _publish
from tests.redis.cluster import Cluster, post_offer, ready, wait_free, wait_workers
from tests.support.caller import Caller, make_offer
from tests.support.loop_watch import LoopWatch
from tests.support.redis_server import RedisServer, free_port


async def receiving(caller: Caller, seconds: float = 1.0) -> int:
    """Audio frames that arrived from the worker in the next ``seconds``."""
    before = len(caller.received)
    await asyncio.sleep(seconds)
    return len(caller.received) - before


async def test_two_gateways_racing_for_the_last_slot_admit_one_call(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.worker("w1", calls=1)
    gateways = [await cluster.gateway(), await cluster.gateway()]
    await wait_workers(http, gateways[0], 1)
    offers = [await make_offer(), await make_offer()]
    for _ in range(3):
        answers = await asyncio.gather(
            *(post_offer(http, gw, sdp) for gw, sdp in zip(gateways, offers, strict=True))
        )
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [201, 503], answers
        admitted = next(body for status, body, _ in answers if status == 201)
        refused, headers = next((body, h) for status, body, h in answers if status == 503)
        assert refused["error"]["code"] == "busy"
        assert int(headers["Retry-After"]) > 0
        assert re.search(r"^a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 ", admitted["sdp"], re.M)
        # Hung up through the other gateway: the slot is free again at once.
        async with http.delete(f"{gateways[1]}/v1/calls/{admitted['call_id']}") as r:
            assert r.status == 204
        await wait_free(http, gateways[0], 1)


async def test_a_worker_takes_only_offers_a_gateway_claimed_for_it(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    worker = await cluster.worker("w1", calls=1)
    offer = {"sdp": await make_offer(), "type": "offer"}
    async with http.post(f"{worker}/v1/calls", json=offer) as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "gateway_only"
    headers = {"Omnirtc-Call-Id": "call_0123456789abcdef"}
    async with http.post(f"{worker}/v1/calls", json=offer, headers=headers) as r:
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "no_claim"


async def test_a_bad_offer_through_the_gateway_is_refused_and_frees_nothing(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.worker("w1", calls=1)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    async with http.post(f"{gateway}/v1/calls", json={"sdp": "x", "type": "answer"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_request"
    async with http.post(f"{gateway}/v1/calls", json={"sdp": "not sdp", "type": "offer"}) as r:
        assert r.status == 400  # the worker's verdict, relayed; its slot given back
    await wait_free(http, gateway, 1)
    async with http.get(f"{gateway}/v1/calls/call_0123456789abcdef") as r:
        assert r.status == 404


async def test_a_caller_that_goes_away_frees_its_slot(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.worker("w1", calls=1)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    caller = Caller(gateway)
    try:
        await caller.call(http)
        await wait_free(http, gateway, 0)
    finally:
        await caller.close()  # no DELETE: the peer connection just closes
    await wait_free(http, gateway, 1, timeout=15)
    async with http.get(f"{gateway}/v1/calls/{caller.call_id}") as r:
        assert (await r.json())["end_reason"] == "connection_closed"


async def test_a_worker_that_cannot_be_reached_is_passed_over(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    await cluster.worker("w1", calls=1)
    # A registration whose process is gone (nothing listens there), and which has the most
    # free slots, so it is picked first.
    ghost = {"url": f"http://127.0.0.1:{free_port()}", "slots": 5, "max_queue": 0, "ready": 1}
    await registry.heartbeat("ghost", ghost, [], ttl_s=60, grace_s=60)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 2)
    status, body, _ = await post_offer(http, gateway, await make_offer())
    assert status == 201, body
    assert await registry.owner(body["call_id"]) == "w1"
    used = {w.worker_id: w.used for w in await registry.workers()}
    assert used == {"ghost": 0, "w1": 1}  # the ghost's claim was given back


async def test_a_whip_call_through_the_gateway_trickles_to_its_worker(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    await cluster.worker("w1", calls=1)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    caller = Caller(gateway)
    try:
        r, offer, answer, candidates = await _publish(http, gateway, caller)
        assert r.status == 201, answer
        location, etag = r.headers["Location"], r.headers["ETag"]
        assert r.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
        call_id = location.rsplit("/", 1)[1]
        assert await registry.owner(call_id) == "w1"
        await caller.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        async with http.patch(
            f"{gateway}{location}",
            data=_fragment(offer, candidates),
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag},
        ) as p:
            assert p.status == 204, await p.text()
        async with http.patch(
            f"{gateway}{location}",
            data=_fragment(offer, candidates),
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": '"x"'},
        ) as p:
            assert p.status == 412  # the worker's verdict on the headers the gateway passed on
        async with asyncio.timeout(10):
            await caller.connected.wait()
        status, body, _ = await post_offer(http, gateway, await make_offer())
        assert (status, body["error"]["code"]) == (503, "busy")  # WHIP took the last slot
        async with http.delete(f"{gateway}{location}") as d:
            assert d.status == 200
        await wait_free(http, gateway, 1)
    finally:
        await caller.close()


async def test_with_auth_the_gateway_and_the_worker_both_check_the_caller(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    keys = [{"name": "alice", "key": "a" * 32}, {"name": "bob", "key": "b" * 32}]
    await cluster.worker("w1", calls=1, auth__api_keys=keys)
    gateway = await cluster.gateway(auth__api_keys=keys)
    await wait_workers(http, gateway, 1)
    offer = {"sdp": await make_offer(), "type": "offer"}
    async with http.post(f"{gateway}/v1/calls", json=offer) as r:
        assert r.status == 401
    assert [w.used for w in await registry.workers()] == [0]  # nothing was claimed
    alice = {"Authorization": "Bearer " + "a" * 32}
    bob = {"Authorization": "Bearer " + "b" * 32}
    async with http.post(f"{gateway}/v1/calls", json=offer, headers=alice) as r:
        assert r.status == 201
        call_id = (await r.json())["call_id"]
    async with http.get(f"{gateway}/v1/calls/{call_id}", headers=bob) as r:
        assert r.status == 404  # the worker owns the call and knows it is alice's
    async with http.delete(f"{gateway}/v1/calls/{call_id}", headers=alice) as r:
        assert r.status == 204


async def test_a_full_cluster_queues_calls_with_position_and_eta_then_refuses(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.worker("w1", calls=1, queue=2)
    gateway = await cluster.gateway(cluster__max_queue=1)  # the cluster's limit is lower
    await wait_workers(http, gateway, 1)
    first, second = Caller(gateway), Caller(gateway)
    try:
        await first.call(http)
        body = await second.call(http)
        assert body["queue"]["position"] == 1
        assert body["queue"]["queue_length"] == 1
        assert body["queue"]["estimated_wait_s"] > 0
        queued = await second.wait_for("session.queued", 5)
        assert queued[0]["position"] == 1
        status, refused, headers = await post_offer(http, gateway, await make_offer())
        assert (status, refused["error"]["code"]) == (503, "busy")
        assert "1 calls wait" in refused["error"]["message"]
        assert int(headers["Retry-After"]) > 0
        body = await ready(http, gateway)
        assert (body["replicas_free"], body["queued"]) == (0, 1)
        async with http.delete(f"{gateway}/v1/calls/{first.call_id}") as r:
            assert r.status == 204
        await second.wait_for("session.queue_done", 5)  # the freed replica went to it
        async with asyncio.timeout(5):  # and the first call's slot leaves the registry
            while (await ready(http, gateway))["queued"] != 0:
                await asyncio.sleep(0.02)
        assert (await ready(http, gateway))["replicas_free"] == 0
    finally:
        await first.close()
        await second.close()


async def test_a_worker_killed_mid_call_frees_its_slots_and_spares_other_calls(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    registry: RedisRegistry,
    loop_watch: LoopWatch | None,
) -> None:
    # Worker processes start (imports, engine warm-up) before any call exists: on two
    # shared cores they may starve this process's loop meanwhile, which harms no call.
    with loop_watch.excused() if loop_watch else contextlib.nullcontext():
        processes = {
            "wa": await cluster.worker_process("wa", calls=1),
            "wb": await cluster.worker_process("wb", calls=1),
        }
        gateway = await cluster.gateway()
        await wait_workers(http, gateway, 2, timeout=60)
    callers = [Caller(gateway), Caller(gateway)]
    try:
        for caller in callers:
            await caller.call(http)
        owners = [await registry.owner(c.call_id or "") for c in callers]
        assert sorted(owners) == ["wa", "wb"]  # spread: one call on each
        doomed, survivor = callers if owners[0] == "wa" else callers[::-1]
        os.killpg(processes["wa"].pid, signal.SIGKILL)
        killed = time.monotonic()
        await wait_workers(http, gateway, 1, timeout=10)
        assert time.monotonic() - killed < 1.0 + 3.0  # its TTL, and some slack
        assert [w.worker_id for w in await registry.workers()] == ["wb"]
        # No new call goes to the dead worker: the one left is full.
        status, body, _ = await post_offer(http, gateway, await make_offer())
        assert (status, body["error"]["code"]) == (503, "busy")
        async with http.get(f"{gateway}/v1/calls/{doomed.call_id}") as r:
            assert r.status == 410
            assert (await r.json())["error"]["code"] == "worker_gone"
        # The other call goes on: media still flows, its worker still serves it.
        assert await receiving(survivor) > 25
        assert survivor.pc.connectionState == "connected"
        async with http.get(f"{gateway}/v1/calls/{survivor.call_id}") as r:
            assert (await r.json())["state"] == "active"
        async with http.delete(f"{gateway}/v1/calls/{survivor.call_id}") as r:
            assert r.status == 204
        await wait_free(http, gateway, 1)
        status, body, _ = await post_offer(http, gateway, await make_offer())
        assert status == 201
        assert await registry.owner(body["call_id"]) == "wb"
    finally:
        for caller in callers:
            await caller.close()


async def test_live_calls_go_on_while_redis_restarts_and_workers_re_register(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    await cluster.worker("w1", calls=2)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    caller = Caller(gateway)
    try:
        await caller.call(http)
        await redis_server.kill()
        assert await receiving(caller) > 25  # media does not go through Redis
        async with http.get(f"{gateway}/v1/calls/{caller.call_id}") as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "registry_unavailable"
        assert (await ready(http, gateway))["ready"] is False
        await redis_server.start()  # empty
        body = await wait_workers(http, gateway, 1, timeout=10)
        assert (body["replicas"], body["replicas_free"]) == (2, 1)  # the live call re-claimed
        async with http.get(f"{gateway}/v1/calls/{caller.call_id}") as r:
            assert r.status == 200
            assert (await r.json())["state"] == "active"
        assert await receiving(caller) > 25
        async with http.delete(f"{gateway}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
        await wait_free(http, gateway, 2)
    finally:
        await caller.close()


async def test_calls_spread_over_several_worker_processes_on_one_machine(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    registry: RedisRegistry,
    loop_watch: LoopWatch | None,
) -> None:
    with loop_watch.excused() if loop_watch else contextlib.nullcontext():  # (as above)
        supervisor = await cluster.worker_process("box", calls=2, processes=2)
        gateway = await cluster.gateway()
        await wait_workers(http, gateway, 2, timeout=60)
    callers = [Caller(gateway) for _ in range(2)]
    try:
        for caller in callers:
            await caller.call(http)
        first = {await registry.owner(c.call_id or "") for c in callers}
        assert first == {"box-0", "box-1"}  # the second call went to the idle process
        for _ in range(2):  # two more offers (answered, left unconnected: less load here)
            status, body, _ = await post_offer(http, gateway, await make_offer())
            assert status == 201, body
        workers = await registry.workers()
        assert sorted(w.worker_id for w in workers) == ["box-0", "box-1"]
        assert [w.used for w in workers] == [2, 2]
        status, _, _ = await post_offer(http, gateway, await make_offer())
        assert status == 503
    finally:
        for caller in callers:
            await caller.close()
    supervisor.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await supervisor.wait() == 0
    assert await registry.workers() == []  # they left the registry on the way out

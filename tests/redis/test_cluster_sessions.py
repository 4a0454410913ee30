"""Through gateways, across workers: /v1/realtime WebSocket sessions, call tokens and per-key
limits.  The official ``openbmb-realtime`` client talks to a gateway; the session runs on a
worker; a real Redis keeps the books."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import pytest
from openbmb_realtime import AudioDelta, RealtimeClient, RealtimeError, TextDelta

from signaling.cluster.registry import RedisRegistry
from tests.integration.test_realtime_ws import RATE, Recorder, pcm, stream
from tests.redis.cluster import Cluster, post_offer, wait_free, wait_workers
from tests.support.caller import Caller, make_offer
from tests.support.media import rms, speechlike

KIOSK = "kiosk-secret-0123456789"
ROBOT = "robot-secret-0123456789"
KEYS = [{"name": "kiosk", "key": KIOSK, "max_calls": 2}, {"name": "robot", "key": ROBOT}]
AUTH: dict[str, Any] = {"auth__api_keys": KEYS, "auth__token_secret": "shared-secret-" * 3}


def client(url: str, key: str = "sk-test") -> RealtimeClient:
    return RealtimeClient(api_key=key, base_url=url, close_timeout=5.0)


async def metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_an_official_client_session_runs_on_a_worker_through_the_gateway(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    worker = await cluster.worker("w1", calls=1)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as direct:
        await http.ws_connect(f"{worker}/v1/realtime")
    assert direct.value.status == 403, "a worker takes sessions only as a gateway placed them"
    session = await client(gateway).audio.connect(model="m", system_prompt="Say it back.")
    events = Recorder(session)
    try:
        assert await registry.owner(session.id) == "w1", "the session is the claimed call"
        await wait_free(http, gateway, 0)
        with pytest.raises(RealtimeError) as refused:
            await client(gateway).audio.connect(model="m")
        assert refused.value.code == "busy", "the cluster's one replica is taken"
        status, body, _ = await post_offer(http, gateway, await make_offer())
        assert (status, body["error"]["code"]) == (503, "busy"), "a call finds it taken too"
        speech = speechlike(1.5, rate=RATE, seed=3)
        await stream(session, np.concatenate([speech, np.zeros(3 * RATE, np.float32)]))
        await events.wait(AudioDelta, 5)
        back = np.concatenate([np.frombuffer(d.audio, dtype="<f4") for d in events.of(AudioDelta)])
        assert rms(back) > 0.3 * rms(speech), "the worker's echo came back through the gateway"
        assert any(t.text.startswith("[echo ") for t in events.of(TextDelta))
        relayed = await metrics(http, gateway)
        assert relayed['omnirtc_relayed_sessions{worker="gw"}'] == 1
        assert relayed['omnirtc_relayed_messages_total{direction="up",worker="gw"}'] >= 5
        assert relayed['omnirtc_relayed_messages_total{direction="down",worker="gw"}'] >= 5
    finally:
        await session.close()
        await events.task
    await wait_free(http, gateway, 1)
    assert (await metrics(http, gateway))['omnirtc_relayed_sessions{worker="gw"}'] == 0
    # A client that vanishes (no close frame) frees its slot on the worker as well.
    gone = await client(gateway).audio.connect(model="m")
    await wait_free(http, gateway, 0)
    gone._socket.transport.abort()  # type: ignore[attr-defined]
    await wait_free(http, gateway, 1, timeout=10)


async def test_a_session_refused_by_the_worker_frees_its_claim(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    # The worker beats rarely, so the registration this test writes for it stays: it claims
    # two slots where the worker has one replica.
    await cluster.worker("w1", calls=1, cluster__heartbeat_s=5, cluster__worker_ttl_s=30)
    gateway = await cluster.gateway()
    await wait_workers(http, gateway, 1)
    async with http.ws_connect(f"{gateway}/v1/realtime?mode=radio") as ws:
        reply = await ws.receive_json(timeout=5)
    assert reply["error"]["code"] == "invalid_mode"
    assert [w.used for w in await registry.workers()] == [0], "nothing was claimed for it"
    await registry.heartbeat("w1", {"slots": 2, "ready": 1}, [], ttl_s=30, grace_s=60)
    first = await client(gateway).audio.connect(model="m")
    try:
        with pytest.raises(RealtimeError) as refused:
            await client(gateway).audio.connect(model="m")
        assert refused.value.code == "busy", "the worker's own refusal, relayed"
        await asyncio.sleep(0.2)
        assert [w.used for w in await registry.workers()] == [1], "the refused claim is freed"
    finally:
        await first.close()


async def keyed(cluster: Cluster, http: aiohttp.ClientSession) -> list[str]:
    """Two workers (two replicas each) and two gateways, all with the same API keys; the
    gateways' URLs."""
    await cluster.worker("w1", calls=2, **AUTH)
    await cluster.worker("w2", calls=2, **AUTH)
    gateways = [await cluster.gateway(**AUTH), await cluster.gateway(**AUTH)]
    await wait_workers(http, gateways[0], 2)
    return gateways


async def test_a_token_starts_one_call_or_session_in_the_whole_cluster(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    gateways = await keyed(cluster, http)
    async with http.post(f"{gateways[0]}/v1/tokens", headers=bearer(ROBOT)) as r:
        token = (await r.json())["token"]
    callers = [Caller(gateways[0]), Caller(gateways[1])]
    try:
        first = await callers[0].call(http, headers=bearer(token))
        # Replayed at the other gateway: the other worker has never seen this token.
        with pytest.raises(AssertionError, match="token_used"):
            await callers[1].call(http, headers=bearer(token))
        async with http.ws_connect(f"{gateways[1]}/v1/realtime", headers=bearer(token)) as ws:
            reply = await ws.receive_json(timeout=5)
        assert reply["error"]["code"] == "token_used"
        assert sum(w.used for w in await registry.workers()) == 1
        async with http.delete(f"{gateways[1]}/v1/calls/{first['call_id']}",
                               headers=bearer(token)) as r:  # fmt: skip
            assert r.status == 204
        with pytest.raises(AssertionError, match="token_used"):
            await callers[1].call(http, headers=bearer(token))  # spent, though its call ended
        # A token whose session never started may be used again.
        async with http.post(f"{gateways[1]}/v1/tokens", headers=bearer(ROBOT)) as r:
            fresh = (await r.json())["token"]
        async with http.ws_connect(f"{gateways[0]}/v1/realtime?mode=radio",
                                   headers=bearer(fresh)) as ws:  # fmt: skip
            assert (await ws.receive_json(timeout=5))["error"]["code"] == "invalid_mode"
        session = await client(gateways[1], fresh).audio.connect(model="m")
        await session.close()
        with pytest.raises(RealtimeError):
            await client(gateways[0], fresh).audio.connect(model="m")
        # A gateway whose callers the workers do not know: they refuse the handshake itself.
        stranger = await cluster.gateway()
        with pytest.raises(RealtimeError) as refused:
            await client(stranger).audio.connect(model="m")
        assert refused.value.code == "worker_refused"
        await wait_free(http, stranger, 4)
    finally:
        for caller in callers:
            await caller.close()


async def test_a_keys_call_limit_holds_across_workers_and_gateways(
    cluster: Cluster, http: aiohttp.ClientSession, registry: RedisRegistry
) -> None:
    gateways = await keyed(cluster, http)
    callers = [Caller(gateways[0]), Caller(gateways[1])]
    sessions = []
    try:
        await callers[0].call(http, headers=bearer(KIOSK))
        sessions.append(await client(gateways[1], KIOSK).audio.connect(model="m"))
        owners = {
            await registry.owner(callers[0].call_id or ""),
            await registry.owner(sessions[0].id),
        }
        assert owners == {"w1", "w2"}, "one on each worker: each alone is under the limit"
        with pytest.raises(AssertionError, match="too_many_calls"):
            await callers[1].call(http, headers=bearer(KIOSK))
        with pytest.raises(RealtimeError) as refused:
            await client(gateways[0], KIOSK).audio.connect(model="m")
        assert refused.value.code == "too_many_calls"
        assert sum(w.used for w in await registry.workers()) == 2, "refusals claim nothing"
        sessions.append(await client(gateways[0], ROBOT).audio.connect(model="m"))
        await sessions.pop(0).close()
        await wait_free(http, gateways[0], 2)
        await callers[1].call(http, headers=bearer(KIOSK))  # room again
    finally:
        for caller in callers:
            await caller.close()
        for session in sessions:
            await session.close()


async def test_a_message_over_the_gateways_limit_closes_that_session_and_frees_its_slot(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.worker("w1", calls=2)
    gateway = await cluster.gateway(realtime_ws__max_message_bytes=128 * 1024)
    await wait_workers(http, gateway, 1)
    other = await client(gateway).audio.connect(model="m")
    try:
        async with http.ws_connect(f"{gateway}/v1/realtime", protocols=("map.realtime",)) as ws:
            seen = [await ws.receive_json(timeout=5)]
            while seen[-1]["type"] != "session.queue_done":
                seen.append(await ws.receive_json(timeout=5))
            await ws.send_json({"type": "session.init", "payload": {}})
            while seen[-1]["type"] != "session.created":
                seen.append(await ws.receive_json(timeout=5))
            await wait_free(http, gateway, 0)
            await ws.send_str("x" * (200 * 1024))
            message = await ws.receive(timeout=5)
            while message.type is aiohttp.WSMsgType.TEXT:
                message = await ws.receive(timeout=5)
            assert ws.close_code == 1009
        await wait_free(http, gateway, 1, timeout=10)
        await other.send_audio(pcm(np.zeros(RATE, dtype=np.float32)))  # the other goes on
    finally:
        await other.close()

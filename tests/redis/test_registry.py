"""The Redis registry and slot ledger against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import Holder, Placement, RedisRegistry, RegistryUnavailable
from tests.support.redis_server import RedisServer


def registry(server: RedisServer, timeout_s: float = 2.0) -> RedisRegistry:
    return RedisRegistry.connect(
        ClusterSettings(redis_url=server.url, redis_timeout_s=timeout_s, key_prefix="t")
    )


@pytest.fixture
async def gateways(redis_server: RedisServer) -> AsyncIterator[list[RedisRegistry]]:
    """Two independent clients: two gateways (and a third for the workers)."""
    clients = [registry(redis_server) for _ in range(3)]
    yield clients
    for client in clients:
        await client.close()


def info(slots: int, max_queue: int = 0, ready: bool = True) -> dict[str, str | int | float]:
    return {
        "url": "http://127.0.0.1:1",
        "engine": "echo",
        "slots": slots,
        "max_queue": max_queue,
        "ready": int(ready),
        "media": "127.0.0.1",
        "call_s": 60.0,
    }


async def beat(reg: RedisRegistry, worker: str, slots: int, live: list[str] | None = None,
               *, max_queue: int = 0, ttl_s: float = 5.0, grace_s: float = 10.0,
               ready: bool = True) -> int:  # fmt: skip
    return await reg.heartbeat(
        worker, info(slots, max_queue, ready), live or [], ttl_s=ttl_s, grace_s=grace_s
    )


async def test_two_gateways_racing_for_the_last_slot_never_oversubscribe(
    gateways: list[RedisRegistry],
) -> None:
    one, two, workers = gateways
    await beat(workers, "w1", slots=2)
    await beat(workers, "w2", slots=1)
    first = await one.claim("call_a", max_queue=0)
    second = await two.claim("call_b", max_queue=0)
    assert {first.placement, second.placement} == {Placement.SLOT}
    # One slot is left: both gateways race for it, many times over.
    racers = [(one if i % 2 else two).claim(f"race_{i}", max_queue=0) for i in range(40)]
    claims = await asyncio.gather(*racers)
    won = [c for c in claims if c.placement is Placement.SLOT]
    assert len(won) == 1
    assert all(c.placement is Placement.FULL for c in claims if c is not won[0])
    listed = {w.worker_id: w for w in await one.workers()}
    assert listed["w1"].used + listed["w2"].used == 3
    assert listed["w1"].free == listed["w2"].free == 0


async def test_calls_go_to_the_worker_with_the_most_free_slots(
    gateways: list[RedisRegistry],
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=2)
    await beat(workers, "w2", slots=2)
    await beat(workers, "cold", slots=4, ready=False)
    placed = [(await gw.claim(f"c{i}", max_queue=0)).worker_id for i in range(4)]
    assert sorted(placed) == ["w1", "w1", "w2", "w2"]
    assert placed[0] != placed[1]  # spread, not filled one after the other
    assert (await gw.claim("c5", max_queue=0)).placement is Placement.FULL


async def test_queue_places_have_positions_and_a_cluster_wide_limit(
    gateways: list[RedisRegistry],
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=1, max_queue=5)
    await beat(workers, "w2", slots=1, max_queue=5)
    assert (await gw.claim("a", max_queue=3)).placement is Placement.SLOT
    assert (await gw.claim("b", max_queue=3)).placement is Placement.SLOT
    queued = [await gw.claim(c, max_queue=3) for c in ("q1", "q2", "q3")]
    assert [q.placement for q in queued] == [Placement.QUEUED] * 3
    assert [q.queued for q in queued] == [1, 2, 3]
    by_worker: dict[str, list[int]] = {}
    for q in queued:
        by_worker.setdefault(q.worker_id, []).append(q.position)
    assert sorted(by_worker.values()) == [[1], [1, 2]]  # the shorter queue first
    full = await gw.claim("q4", max_queue=3)
    assert full.placement is Placement.FULL
    assert full.queued == 3


async def test_release_frees_the_slot_for_the_next_call(gateways: list[RedisRegistry]) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=1)
    claim = await gw.claim("a", max_queue=0)
    assert (await gw.claim("b", max_queue=0)).placement is Placement.FULL
    assert await gw.owner("a") == "w1"
    assert await workers.release("w1", "a")
    assert not await workers.release("w1", "a")  # idempotent
    assert claim.worker_id == "w1"
    assert (await gw.claim("b", max_queue=0)).placement is Placement.SLOT
    assert await gw.owner("a") == "w1"  # an ended call still routes to its worker a while


async def test_a_dead_worker_expires_with_its_slots(gateways: list[RedisRegistry]) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=1, ttl_s=0.5)
    await beat(workers, "w2", slots=1, ttl_s=30)
    first = await gw.claim("a", max_queue=0)
    second = await gw.claim("b", max_queue=0)
    assert {first.worker_id, second.worker_id} == {"w1", "w2"}
    await asyncio.sleep(0.8)  # w1 stops beating: it is dead
    assert [w.worker_id for w in await gw.workers()] == ["w2"]
    assert await gw.worker("w1") is None
    assert (await gw.claim("c", max_queue=0)).placement is Placement.FULL  # never routed to w1
    await beat(workers, "w1", slots=1, ttl_s=5)  # it comes back, empty
    assert (await gw.claim("c", max_queue=0)).worker_id == "w1"


async def test_heartbeat_frees_stale_claims_and_keeps_live_ones(
    gateways: list[RedisRegistry],
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=4)
    for call in ("live", "lost", "fresh"):
        await gw.claim(call, max_queue=0)
    await asyncio.sleep(0.3)
    await gw.claim("fresh2", max_queue=0)
    # "lost" was claimed by a gateway that never delivered its offer; "fresh2" is younger
    # than the grace (its offer may still be on its way).
    freed = await beat(workers, "w1", slots=4, live=["live", "fresh"], grace_s=0.2)
    assert freed == 1
    (w1,) = await gw.workers()
    assert w1.used == 3
    assert (await gw.claim("next", max_queue=0)).placement is Placement.SLOT
    assert (await gw.claim("next2", max_queue=0)).placement is Placement.FULL


async def test_a_token_starts_one_call_in_the_whole_cluster(
    gateways: list[RedisRegistry],
) -> None:
    one, two, workers = gateways
    await beat(workers, "w1", slots=2)
    await beat(workers, "w2", slots=2)
    token = Holder(key="kiosk", token="tok1", token_ttl_s=60)
    first = await one.claim("a", max_queue=0, holder=token)
    assert first.placement is Placement.SLOT
    again = await one.claim("a", max_queue=0, exclude=[first.worker_id], holder=token)
    assert again.placement is Placement.SLOT, "a retry for the same call keeps its token"
    assert again.worker_id != first.worker_id
    replay = await two.claim("b", max_queue=0, holder=token)
    assert replay.placement is Placement.TOKEN_USED, "another gateway, another worker: refused"
    assert sum(w.used for w in await one.workers()) == 2, "the refusal claimed nothing"
    # A call that started keeps its token spent after it ends ...
    assert await workers.release(again.worker_id, "a")
    assert (await two.claim("c", max_queue=0, holder=token)).placement is Placement.TOKEN_USED
    # ... and one that never started gives it back.
    other = Holder(key="kiosk", token="tok2", token_ttl_s=60)
    refused = await one.claim("d", max_queue=0, holder=other)
    assert await one.release(refused.worker_id, "d", refund_token="tok2")
    assert (await two.claim("e", max_queue=0, holder=other)).placement is Placement.SLOT
    assert not await one.release(first.worker_id, "d", refund_token="tok2")
    assert (await one.claim("f", max_queue=0, holder=other)).placement is Placement.TOKEN_USED, (
        "a refund for another call id leaves the token spent"
    )


async def test_a_spent_token_is_forgotten_when_it_could_no_longer_be_used(
    gateways: list[RedisRegistry],
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=3)
    token = Holder(key="kiosk", token="tok", token_ttl_s=0.3)
    await gw.claim("a", max_queue=0, holder=token)
    assert (await gw.claim("b", max_queue=0, holder=token)).placement is Placement.TOKEN_USED
    await asyncio.sleep(0.5)  # the token itself has expired by now: no memory is needed
    assert (await gw.claim("b", max_queue=0, holder=token)).placement is Placement.SLOT


async def test_a_keys_limit_holds_across_workers_and_gateways(
    gateways: list[RedisRegistry],
) -> None:
    one, two, workers = gateways
    await beat(workers, "w1", slots=2)
    await beat(workers, "w2", slots=2)
    kiosk = Holder(key="kiosk", max_calls=2)
    first = await one.claim("a", max_queue=0, holder=kiosk)
    second = await two.claim("b", max_queue=0, holder=kiosk)
    assert {first.worker_id, second.worker_id} == {"w1", "w2"}
    assert (await one.claim("c", max_queue=0, holder=kiosk)).placement is Placement.KEY_LIMIT
    assert (await two.claim("c", max_queue=0, holder=Holder(key="robot", max_calls=2))).worker_id
    assert (await one.claim("d", max_queue=0)).placement is Placement.SLOT, "no key, no limit"
    assert await workers.release(first.worker_id, "a")  # an ended call stops counting
    assert (await two.claim("e", max_queue=0, holder=kiosk)).placement is Placement.SLOT
    assert (await two.claim("f", max_queue=0, holder=kiosk)).placement is Placement.KEY_LIMIT
    # Racing gateways never take more than the limit.
    await beat(workers, "w3", slots=20)
    robot = Holder(key="robot2", max_calls=3)
    racers = [(one if i % 2 else two).claim(f"r{i}", max_queue=0, holder=robot) for i in range(12)]
    placed = [c.placement for c in await asyncio.gather(*racers)]
    assert placed.count(Placement.SLOT) == 3
    assert placed.count(Placement.KEY_LIMIT) == 9


async def test_a_dead_workers_calls_stop_counting_against_their_key(
    gateways: list[RedisRegistry],
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=1, ttl_s=0.4)
    await beat(workers, "w2", slots=2, ttl_s=30)
    kiosk = Holder(key="kiosk", max_calls=2)
    assert (await gw.claim("a", max_queue=0, exclude=["w2"], holder=kiosk)).worker_id == "w1"
    assert (await gw.claim("b", max_queue=0, exclude=["w1"], holder=kiosk)).worker_id == "w2"
    assert (await gw.claim("c", max_queue=0, holder=kiosk)).placement is Placement.KEY_LIMIT
    await asyncio.sleep(0.6)  # the worker holding one of them died, and its claims with it
    assert (await gw.claim("c", max_queue=0, holder=kiosk)).placement is Placement.SLOT


async def test_workers_re_register_their_calls_after_redis_restarts(
    redis_server: RedisServer, gateways: list[RedisRegistry]
) -> None:
    gw, _, workers = gateways
    await beat(workers, "w1", slots=2)
    await gw.claim("a", max_queue=0)
    await redis_server.kill()
    with pytest.raises(RegistryUnavailable):
        await gw.claim("b", max_queue=0)
    await redis_server.start()  # empty: everything registered is gone
    assert await gw.workers() == []
    await beat(workers, "w1", slots=2, live=["a"])
    assert await gw.owner("a") == "w1"
    (w1,) = await gw.workers()
    assert (w1.used, w1.free) == (1, 1)


async def test_an_unreachable_redis_is_a_clear_error_within_the_timeout() -> None:
    dead = RedisServer()  # never started: nothing listens on its port
    reg = registry(dead, timeout_s=0.5)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(RegistryUnavailable, match="Redis"):
                await reg.claim("a", max_queue=0)
        assert not await reg.ping()
    finally:
        await reg.close()

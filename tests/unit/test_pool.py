"""The replica pool: tickets, the queue, fairness, broken replicas."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from omni.api import UNIT_SAMPLES, SessionConfig, Unit
from omni.pool import QueueFull, QueuePosition, ReplicaPool
from tests.support.engines import ScriptedEngine


async def _pool(replicas: int, max_queue: int) -> ReplicaPool:
    pool = ReplicaPool(ScriptedEngine(replicas=replicas), max_queue=max_queue)
    await pool.start()
    return pool


async def test_tickets_take_replicas_then_queue_places_then_refuse() -> None:
    pool = await _pool(replicas=1, max_queue=2)
    first = pool.join()
    assert not first.queued
    second, third = pool.join(), pool.join()
    assert second.queued and third.queued
    with pytest.raises(QueueFull):
        pool.join()
    told: list[QueuePosition] = []
    waiting = asyncio.ensure_future(third.wait(told.append))
    await asyncio.sleep(0)
    assert told[-1].position == 2
    second.cancel()
    await asyncio.sleep(0)
    assert told[-1].position == 1
    assert first.lease is not None
    first.cancel()
    lease = await asyncio.wait_for(waiting, 1)
    assert lease.slot.busy
    assert pool.free == 0
    third.cancel()
    assert pool.free == 1
    await pool.stop()


async def test_a_waiter_is_served_before_a_newcomer() -> None:
    pool = await _pool(replicas=1, max_queue=1)
    holder = pool.join()
    waiter = pool.join()
    assert holder.lease is not None
    holder.cancel()
    newcomer = pool.join()
    assert newcomer.queued, "the freed replica went to the caller who waited"
    lease = await waiter.wait(lambda _: None)
    assert lease is waiter.lease
    waiter.cancel()
    assert not newcomer.queued or newcomer.waiter is not None
    assert (await newcomer.wait(lambda _: None)) is newcomer.lease
    newcomer.cancel()
    await pool.stop()


async def test_waiters_fail_when_no_replica_works() -> None:
    pool = await _pool(replicas=1, max_queue=2)
    holder = pool.join()
    waiter = pool.join()
    assert holder.lease is not None
    pool.mark_broken(holder.lease, "test")
    assert not pool.ready
    with pytest.raises(QueueFull):
        await waiter.wait(lambda _: None)
    with pytest.raises(QueueFull):
        pool.join()
    for _ in range(100):
        if pool.ready:
            break
        await asyncio.sleep(0.02)
    assert pool.ready, "the broken replica was rebuilt"
    assert pool.free == 1
    await pool.stop()


async def test_a_replica_stuck_in_a_step_is_rebuilt_on_a_fresh_thread() -> None:
    engine = ScriptedEngine(replicas=1, hang_on=frozenset({0}), fault_session=0)
    pool = ReplicaPool(engine, max_queue=1)
    await pool.start()
    loop = asyncio.get_running_loop()
    unit = Unit(index=0, start_ms=0, audio=np.zeros(UNIT_SAMPLES, np.float32))
    try:
        first = pool.lend(SessionConfig())
        binding = await first.open(lambda *_: None)
        stuck = loop.run_in_executor(binding.executor, binding.session.step, unit)
        async with asyncio.timeout(5):
            while not engine.hung_steps:
                await asyncio.sleep(0.01)
        await first.close(binding, "the step hung", hung=True)
        assert pool.healthy == 0
        # The replica is rebuilt on a new thread; the next caller steps on it while the old
        # thread is still stuck.
        async with asyncio.timeout(10):
            while not pool.ready:
                await asyncio.sleep(0.01)
            waiting = pool.lend(SessionConfig())
            second = await waiting.open(lambda *_: None)
            result = await loop.run_in_executor(second.executor, second.session.step, unit)
        assert result.listen and engine.replicas_created == 2
        assert second.executor is not binding.executor
        assert not stuck.done() and engine.returned_late == 0
        assert engine.closed_sessions == 0, "the stuck session was not closed on its thread"
        await waiting.close(second)
        assert pool.free == 1 and pool.healthy == 1
    finally:
        engine.release.set()
        await pool.stop()

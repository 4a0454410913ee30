"""The pool that lends model replicas to calls, with a bounded waiting queue.

A call holds one replica for its whole life.  When every replica is busy, a new call waits
in a queue of at most ``max_queue`` calls, first come first served, and is told its position
and an estimated wait whenever the queue moves; a full queue refuses the call.  The estimate
is the position times the mean length of recent calls, divided by the number of replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from omni.api import Engine, EngineInfo, Replica
from omni.executor import ReplicaThread

log = logging.getLogger(__name__)

DEFAULT_CALL_S = 120.0
"""Assumed length of a call before any has ended (the official demo's figure)."""


class QueueFull(RuntimeError):
    """Every replica is busy and the waiting queue is full."""


@dataclass(frozen=True, slots=True)
class QueuePosition:
    position: int
    """1 = next to be served."""
    estimated_wait_s: float
    queue_length: int


OnQueue = Callable[[QueuePosition], None]


@dataclass(slots=True)
class ReplicaSlot:
    index: int
    replica: Replica
    thread: ReplicaThread
    busy: bool = False
    healthy: bool = True


@dataclass(slots=True)
class Lease:
    """A replica lent to one call."""

    slot: ReplicaSlot
    pool: ReplicaPool
    since: float = field(default_factory=time.monotonic)
    waited_s: float = 0.0

    @property
    def replica(self) -> Replica:
        return self.slot.replica

    @property
    def executor(self) -> Executor:
        return self.slot.thread

    def release(self) -> None:
        self.pool.release(self)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Lease]
    on_queue: OnQueue
    since: float = field(default_factory=time.monotonic)


class ReplicaPool:
    """Holds ``engine.info.replicas`` replicas; ready once every one has warmed up."""

    def __init__(self, engine: Engine, max_queue: int = 0) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._slots: list[ReplicaSlot] = []
        self._waiters: deque[_Waiter] = deque()
        self._call_s = DEFAULT_CALL_S
        self.ready = False
        self.error: str | None = None

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    @property
    def free(self) -> int:
        return sum(1 for s in self._slots if not s.busy and s.healthy)

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def can_admit(self) -> bool:
        """Whether a new call would get a replica now or a place in the queue."""
        return self.ready and (self.free > 0 or len(self._waiters) < self.max_queue)

    async def start(self) -> None:
        """Create and warm up every replica, each on its own thread."""
        loop = asyncio.get_running_loop()
        name = self.engine.info.name
        for index in range(self.engine.info.replicas):
            thread = ReplicaThread(f"{name}-replica-{index}")
            try:
                replica = await loop.run_in_executor(thread, self.engine.create_replica, index)
            except BaseException:
                thread.shutdown(wait=False)
                raise
            self._slots.append(ReplicaSlot(index, replica, thread))
        try:
            await asyncio.gather(
                *(loop.run_in_executor(s.thread, s.replica.warmup) for s in self._slots)
            )
        except Exception as exc:
            self.error = f"{name} failed to warm up: {exc}"
            raise
        self.ready = True
        log.info("engine ready", extra={"engine": name, "replicas": len(self._slots)})

    def try_acquire(self) -> Lease | None:
        if not self.ready:
            return None
        for slot in self._slots:
            if not slot.busy and slot.healthy:
                slot.busy = True
                return Lease(slot, self)
        return None

    async def acquire(self, on_queue: OnQueue) -> Lease:
        """A free replica, waiting in the queue if need be (raises QueueFull)."""
        lease = self.try_acquire() if not self._waiters else None
        if lease is not None:
            return lease
        if not self.ready or len(self._waiters) >= self.max_queue:
            raise QueueFull(f"all {self.size} replicas are busy and {self.queued} calls wait")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), on_queue)
        self._waiters.append(waiter)
        self._announce()
        try:
            lease = await waiter.future
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._announce()
            elif waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()
            raise
        lease.waited_s = time.monotonic() - waiter.since
        return lease

    def release(self, lease: Lease) -> None:
        held = time.monotonic() - lease.since
        self._call_s = 0.8 * self._call_s + 0.2 * held
        slot = lease.slot
        while self._waiters and slot.healthy:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(Lease(slot, self))
                self._announce()
                return
        slot.busy = False

    def mark_broken(self, lease: Lease, why: str) -> None:
        """Take a replica out of service (its cleanup failed)."""
        lease.slot.healthy = False
        log.error("replica %d taken out of service: %s", lease.slot.index, why)

    def _announce(self) -> None:
        replicas = max(1, sum(1 for s in self._slots if s.healthy))
        length = len(self._waiters)
        for position, waiter in enumerate(self._waiters, start=1):
            wait = position * self._call_s / replicas
            waiter.on_queue(QueuePosition(position, round(wait, 1), length))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready = False
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        self._waiters.clear()
        for slot in self._slots:
            try:
                await loop.run_in_executor(slot.thread, slot.replica.shutdown)
            except Exception:
                log.exception("replica %d failed to shut down", slot.index)
            slot.thread.shutdown(wait=False)
        self._slots.clear()

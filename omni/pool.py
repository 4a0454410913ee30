"""The pool that lends model replicas to calls, with a bounded waiting queue.

A call holds one replica for its whole life.  Admission is synchronous: ``join`` either hands
out a free replica at once or a place in a queue of at most ``max_queue`` calls (first come,
first served), and refuses the call when the queue is full, so concurrent requests can never
over-book the pool.  A waiting call is told its position and an estimated wait whenever the
queue moves: the position times the mean length of recent calls, divided by the number of
healthy replicas.

A call borrows its replica through ``lend``: the returned source (an ``omni.api.EngineSource``)
opens the call's session on the replica's own thread once its turn comes and closes it there
when the call ends, so nothing outside this package ever runs work on a replica thread.

A replica whose cleanup failed is taken out of service and rebuilt on its own thread (with
back-off) by a task the pool owns; while no replica is healthy the pool is not ready and
refuses calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from omni.api import (
    Engine,
    EngineBinding,
    EngineInfo,
    QueueCallback,
    Replica,
    SessionConfig,
)
from omni.errors import EngineBusy, EngineUnavailable
from omni.executor import ReplicaThread

log = logging.getLogger(__name__)

DEFAULT_CALL_S = 120.0
"""Assumed length of a call before any has ended (the official demo's figure)."""
_REPAIR_BACKOFF_S = (1.0, 5.0, 15.0, 60.0)
CLOSE_TIMEOUT_S = 30.0
"""A session cleanup still running after this long is hung (its replica is rebuilt)."""


class QueueFull(EngineBusy):
    """Every replica is busy and the waiting queue is full (or no replica is healthy)."""


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
    abandoned: bool = False
    """The replica's thread got stuck and was replaced: skip shutting the old replica down."""


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
    on_queue: OnQueue | None = None
    last: QueuePosition | None = None
    since: float = field(default_factory=time.monotonic)

    def tell(self, where: QueuePosition) -> None:
        self.last = where
        if self.on_queue is not None:
            self.on_queue(where)


@dataclass(slots=True)
class Ticket:
    """A call's claim on the pool: a replica now, or a place in the queue."""

    pool: ReplicaPool
    lease: Lease | None = None
    waiter: _Waiter | None = None

    @property
    def queued(self) -> bool:
        return self.lease is None

    async def wait(self, on_queue: OnQueue) -> Lease:
        """The replica, once it is this call's turn (told its place meanwhile)."""
        if self.lease is not None:
            return self.lease
        waiter = self.waiter
        assert waiter is not None
        waiter.on_queue = on_queue
        if waiter.last is not None and not waiter.future.done():
            on_queue(waiter.last)
        lease = await waiter.future
        lease.waited_s = time.monotonic() - waiter.since
        self.lease = lease
        return lease

    def cancel(self) -> None:
        """Give the claim back, whatever state it is in (idempotent)."""
        lease, self.lease = self.lease, None
        waiter, self.waiter = self.waiter, None
        if lease is not None:
            lease.release()
        elif waiter is not None:
            self.pool._leave(waiter)


class ReplicaPool:
    """Holds ``engine.info.replicas`` replicas; ready once they have warmed up."""

    def __init__(self, engine: Engine, max_queue: int = 0) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._slots: list[ReplicaSlot] = []
        self._waiters: deque[_Waiter] = deque()
        self._repairs: set[asyncio.Task[None]] = set()
        self._call_s = DEFAULT_CALL_S
        self._warm = False
        self._started = asyncio.Event()
        self.error: str | None = None

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    @property
    def ready(self) -> bool:
        return self._warm and self.healthy > 0

    @property
    def healthy(self) -> int:
        return sum(1 for s in self._slots if s.healthy)

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

    async def started(self) -> None:
        """Return once ``start`` has ended, warm or failed (see ``ready`` and ``error``)."""
        await self._started.wait()

    async def start(self) -> None:
        """Create and warm up every replica, each on its own thread."""
        try:
            await self._start()
        finally:
            self._started.set()

    async def _start(self) -> None:
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
        self._warm = True
        log.info("engine ready", extra={"engine": name, "replicas": len(self._slots)})

    def try_acquire(self) -> Lease | None:
        if not self.ready or self._waiters:
            return None
        for slot in self._slots:
            if not slot.busy and slot.healthy:
                slot.busy = True
                return Lease(slot, self)
        return None

    def join(self) -> Ticket:
        """Claim a replica now or a place in the queue; raises QueueFull."""
        lease = self.try_acquire()
        if lease is not None:
            return Ticket(self, lease=lease)
        if not self.ready or len(self._waiters) >= self.max_queue:
            raise QueueFull(f"all {self.size} replicas are busy and {self.queued} calls wait")
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._announce()
        return Ticket(self, waiter=waiter)

    def lend(self, config: SessionConfig) -> PoolSource:
        """A call's engine source: claims a replica now or a place in the queue (raises
        QueueFull, an EngineBusy, when neither is free); the call opens its session
        through it and must close it, however the call ends."""
        return PoolSource(self, self.join(), config)

    def release(self, lease: Lease) -> None:
        held = time.monotonic() - lease.since
        self._call_s = 0.8 * self._call_s + 0.2 * held
        slot = lease.slot
        slot.busy = False
        if slot.healthy:
            self._serve(slot)

    def _serve(self, slot: ReplicaSlot) -> None:
        """Hand a free, healthy replica to the first caller still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                slot.busy = True
                waiter.future.set_result(Lease(slot, self))
                self._announce()
                return

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.future.cancel()
            self._announce()
        elif waiter.future.done() and not waiter.future.cancelled():
            waiter.future.result().release()

    def mark_broken(self, lease: Lease, why: str, *, hung: bool = False) -> None:
        """Take a replica out of service and rebuild it.  ``hung``: its thread is stuck in a
        call into the replica, so that thread is abandoned (it ends if the call ever
        returns) and the replica is rebuilt on a new thread, without shutting the old one
        down (that would race the stuck call; its memory is freed with it)."""
        slot = lease.slot
        slot.healthy = False
        log.error("replica %d taken out of service: %s", slot.index, why)
        if hung:
            stuck = slot.thread
            slot.thread = ReplicaThread(f"{self.engine.info.name}-replica-{slot.index}")
            slot.abandoned = True
            stuck.shutdown(wait=False)
        if not self.healthy:
            for waiter in self._waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(QueueFull("no engine replica is working"))
            self._waiters.clear()
        task = asyncio.get_running_loop().create_task(
            self._repair(slot), name=f"repair-{slot.index}"
        )
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _repair(self, slot: ReplicaSlot) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(1_000_000):
            old = slot.replica
            if not slot.abandoned:
                try:
                    await loop.run_in_executor(slot.thread, old.shutdown)
                except Exception:
                    log.exception("broken replica %d failed to shut down", slot.index)
            slot.abandoned = False
            try:
                replica = await loop.run_in_executor(
                    slot.thread, self.engine.create_replica, slot.index
                )
                await loop.run_in_executor(slot.thread, replica.warmup)
            except Exception:
                delay = _REPAIR_BACKOFF_S[min(attempt, len(_REPAIR_BACKOFF_S) - 1)]
                log.exception("replica %d could not be rebuilt; again in %.0f s", slot.index, delay)
                await asyncio.sleep(delay)
                continue
            slot.replica = replica
            slot.healthy = True
            slot.busy = False
            log.info("replica %d rebuilt", slot.index)
            self._serve(slot)
            return

    def _announce(self) -> None:
        replicas = max(1, self.healthy)
        length = len(self._waiters)
        for position, waiter in enumerate(self._waiters, start=1):
            wait = position * self._call_s / replicas
            waiter.tell(QueuePosition(position, round(wait, 1), length))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self._warm = False
        for task in list(self._repairs):
            task.cancel()
        await asyncio.gather(*self._repairs, return_exceptions=True)
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


class PoolSource:
    """Lends one call the replica its ticket claimed (an ``omni.api.EngineSource``)."""

    def __init__(self, pool: ReplicaPool, ticket: Ticket, config: SessionConfig) -> None:
        self._pool = pool
        self._ticket = ticket
        self._config = config

    @property
    def queued(self) -> bool:
        """Whether the call is waiting for a replica (it got none at admission)."""
        return self._ticket.queued

    async def open(self, on_queue: QueueCallback) -> EngineBinding:
        def told(where: QueuePosition) -> None:
            on_queue(where.position, where.estimated_wait_s, where.queue_length)

        lease = await self._ticket.wait(told)
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(lease.executor, lease.replica.open_session, self._config)
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The call ended while the session was being opened: finish, then clean up; the
            # call's close() gives the replica back.
            opened = await opening
            await loop.run_in_executor(lease.executor, opened.close)
            raise
        except Exception as exc:
            log.exception("could not open an engine session")
            raise EngineUnavailable(f"the engine could not open a session: {exc}") from None
        info = self._pool.info
        return EngineBinding(info.name, session, lease.executor, lease.waited_s, info.frame_side)

    async def close(
        self, binding: EngineBinding | None, broken: str | None = None, *, hung: bool = False
    ) -> None:
        lease = self._ticket.lease
        try:
            if binding is not None and not hung:
                loop = asyncio.get_running_loop()
                closing = loop.run_in_executor(binding.executor, binding.session.close)
                try:
                    await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
                except TimeoutError:
                    broken, hung = f"session cleanup ran past {CLOSE_TIMEOUT_S:g} s", True
        except Exception as exc:
            broken = f"session cleanup failed: {exc}"
            raise
        finally:
            if broken is not None and lease is not None:
                self._pool.mark_broken(lease, broken, hung=hung)
                self._ticket.lease = None  # a broken replica is not handed back as free
            self._ticket.cancel()

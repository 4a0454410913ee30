"""Model replicas, each owned by one thread, and the pool that lends them to calls.

Every call to a replica (warm-up, open a session, step, close) runs on the replica's own
thread, in order, through a bounded queue; callers ``await`` it from the event loop.  A call
holds one replica for its whole life (``ReplicaPool.try_acquire`` / ``Lease.release``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from omni.api import Engine, EngineInfo, Replica

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_QUEUE_LIMIT = 8


class ExecutorBusy(RuntimeError):
    """A replica's work queue is full (its caller is not awaiting its work)."""


class ReplicaThread(Executor):
    """A single worker thread with a bounded work queue."""

    def __init__(self, name: str) -> None:
        self._work: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue(
            maxsize=_QUEUE_LIMIT
        )
        self._shutdown = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._shutdown:
            raise RuntimeError("replica thread is shut down")
        future: Future[T] = Future()
        try:
            self._work.put_nowait((future, lambda: fn(*args, **kwargs)))
        except queue.Full:
            raise ExecutorBusy(f"{self._thread.name}: {_QUEUE_LIMIT} jobs already queued") from None
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._work.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


@dataclass(slots=True)
class ReplicaSlot:
    index: int
    replica: Replica
    thread: ReplicaThread
    busy: bool = False
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class Lease:
    """A replica lent to one call."""

    slot: ReplicaSlot
    pool: ReplicaPool

    @property
    def replica(self) -> Replica:
        return self.slot.replica

    @property
    def executor(self) -> Executor:
        return self.slot.thread

    def release(self) -> None:
        self.pool.release(self)


class ReplicaPool:
    """Holds ``engine.info.replicas`` replicas; ready once every one has warmed up."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._slots: list[ReplicaSlot] = []
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

    def release(self, lease: Lease) -> None:
        lease.slot.busy = False

    def mark_broken(self, lease: Lease, why: str) -> None:
        """Take a replica out of service (its cleanup failed)."""
        lease.slot.healthy = False
        log.error("replica %d taken out of service: %s", lease.slot.index, why)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready = False
        for slot in self._slots:
            try:
                await loop.run_in_executor(slot.thread, slot.replica.shutdown)
            except Exception:
                log.exception("replica %d failed to shut down", slot.index)
            slot.thread.shutdown(wait=False)
        self._slots.clear()

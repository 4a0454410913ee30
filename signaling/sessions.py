"""Admission and the registry of live calls in this process.

``CallManager.create`` admits a call (an explicit slot count, and for engine calls a free
replica or a place in the replica queue), negotiates it and starts it in the manager's
TaskGroup.  The call itself then takes a replica (``PoolEngineSource``), waiting in the queue
if need be, and gives it back when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import Language, SessionConfig
from omni.pool import QueueFull, QueuePosition, ReplicaPool, Ticket
from realtime.binding import EngineBinding, QueueCallback
from realtime.clock import Clock
from realtime.errors import CallError, EngineBusy, EngineUnavailableError
from realtime.session import Call, CallMode
from signaling.errors import ApiError, busy, from_call_error
from signaling.messages import CallRequest
from signaling.recordings import Recordings
from signaling.settings import Settings

log = logging.getLogger(__name__)

_ENDED_KEPT = 256
_RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Admitted:
    call_id: str
    answer_sdp: str


class PoolEngineSource:
    """Lends a call the replica its ticket claimed (realtime.session.EngineSource)."""

    def __init__(self, pool: ReplicaPool, ticket: Ticket, config: SessionConfig) -> None:
        self._pool = pool
        self._ticket = ticket
        self._config = config

    @property
    def queued(self) -> bool:
        return self._ticket.queued

    async def open(self, on_queue: QueueCallback) -> EngineBinding:
        def told(where: QueuePosition) -> None:
            on_queue(where.position, where.estimated_wait_s, where.queue_length)

        try:
            lease = await self._ticket.wait(told)
        except QueueFull as exc:
            raise EngineBusy(str(exc)) from None
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
            raise EngineUnavailableError(f"the engine could not open a session: {exc}") from None
        return EngineBinding(self._pool.info.name, session, lease.executor, lease.waited_s)

    async def close(self, binding: EngineBinding | None) -> None:
        lease = self._ticket.lease
        try:
            if binding is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(binding.executor, binding.session.close)
        except Exception as exc:
            if lease is not None:
                self._pool.mark_broken(lease, f"session cleanup failed: {exc}")
                self._ticket.lease = None  # a broken replica is not handed back as free
            raise
        finally:
            self._ticket.cancel()


class CallManager:
    def __init__(self, settings: Settings, pool: ReplicaPool, clock: Clock) -> None:
        self._settings = settings
        self._pool = pool
        self._clock = clock
        self._calls: dict[str, Call] = {}
        self._ended: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._admitting = 0
        self._tasks: asyncio.TaskGroup | None = None
        self.total_calls = 0
        self.recordings = Recordings(settings.recording)

    @property
    def active(self) -> int:
        return len(self._calls)

    @property
    def max_calls(self) -> int:
        return self._settings.server.max_calls

    def bind(self, tasks: asyncio.TaskGroup) -> None:
        """Run calls in ``tasks`` (the app's lifetime TaskGroup)."""
        self._tasks = tasks

    async def create(self, request: CallRequest, voice: NDArray[np.float32] | None) -> Admitted:
        if self._tasks is None:
            raise ApiError(503, "not_ready", "the server is starting")
        mode = CallMode(request.session.mode)
        self.recordings.check(request.session)  # recording: refused before admission
        if len(self._calls) + self._admitting >= self.max_calls:
            raise busy(f"the server is at its limit of {self.max_calls} calls", _RETRY_AFTER_S)
        source = None
        if mode is CallMode.ENGINE:
            if not self._pool.ready:
                raise ApiError(
                    503,
                    "not_ready",
                    self._pool.error or "the engine is still warming up",
                    {"Retry-After": str(_RETRY_AFTER_S)},
                )
            try:
                ticket = self._pool.join()
            except QueueFull:
                raise busy(
                    f"every engine replica is in a call and {self._pool.queued} calls wait",
                    _RETRY_AFTER_S,
                ) from None
            config = SessionConfig(
                instructions=request.session.instructions,
                language=Language(request.session.language),
                voice=voice,
            )
            source = PoolEngineSource(self._pool, ticket, config)
        self._admitting += 1
        call_id = "call_" + secrets.token_hex(8)
        call = Call(
            call_id,
            mode,
            engine_name=self._pool.info.name,
            config=self._settings.call,
            peer_config=self._settings.webrtc,
            clock=self._clock,
        )
        try:
            answer = await call.negotiate(request.sdp)
        except BaseException as exc:
            if source is not None:
                await source.close(None)
            await call.peer.close()
            if isinstance(exc, CallError):
                raise from_call_error(exc) from None
            raise
        finally:
            self._admitting -= 1
        self._calls[call_id] = call
        self.total_calls += 1
        self.recordings.attach(call, request.session)  # recording: when asked, with consent
        self._tasks.create_task(self._run(call, source), name=f"call:{call_id}")
        log.info("call admitted", extra={"call_id": call_id, "mode": mode.value})
        return Admitted(call_id, answer)

    async def _run(self, call: Call, source: PoolEngineSource | None) -> None:
        try:
            await call.run(source)
        except Exception:
            log.exception("call %s crashed", call.call_id)
        finally:
            self._calls.pop(call.call_id, None)
            self._ended[call.call_id] = call.snapshot()
            while len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)

    def snapshot(self, call_id: str) -> dict[str, Any]:
        call = self._calls.get(call_id)
        if call is not None:
            return call.snapshot()
        ended = self._ended.get(call_id)
        if ended is not None:
            return ended
        raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")

    async def end(self, call_id: str, wait_s: float = 15.0) -> None:
        """Hang up a call and wait (bounded) until everything it held is freed."""
        call = self._calls.get(call_id)
        if call is None:
            if call_id not in self._ended:
                raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")
            return
        call.stop("deleted")
        try:
            async with asyncio.timeout(wait_s):
                await call.finished.wait()
        except TimeoutError:
            log.warning("call %s still ending after %.0f s", call_id, wait_s)

    def stop_all(self, reason: str) -> None:
        for call in list(self._calls.values()):
            call.stop(reason)

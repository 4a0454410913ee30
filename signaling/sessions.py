"""Admission and the registry of live calls in this process.

``CallManager.create`` admits a call (an explicit slot count, and for engine calls a free
replica or a place in the replica queue), negotiates it and starts it in the manager's
TaskGroup.  The call itself then takes a replica (through the source the pool lends it),
waiting in the queue if need be, and gives it back when it ends, however it ends.  Nothing here
touches a replica or its thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import EngineSource, Language, SessionConfig
from omni.errors import EngineBusy
from omni.pool import ReplicaPool
from realtime.clock import Clock
from realtime.session import Call, CallMode
from signaling.auth import ANONYMOUS, Owner, Principal
from signaling.errors import RETRY_AFTER_S, ApiError, busy, to_api_error
from signaling.hooks import CallHooks
from signaling.logctx import bind_call_id
from signaling.messages import CallRequest
from signaling.recordings import Recordings
from signaling.settings import Settings

log = logging.getLogger(__name__)

_ENDED_KEPT = 256


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call that was admitted and negotiated."""

    call_id: str
    """``call_`` + 32 random hex digits (128 bits: unguessable)."""
    answer_sdp: str


def new_call_id() -> str:
    return "call_" + secrets.token_hex(16)


class CallManager:
    """Admits calls, runs each in the app's TaskGroup, and keeps the snapshots of the last
    ended ones.  Every method raises ApiError (with the HTTP status to answer) on refusal."""

    def __init__(
        self,
        settings: Settings,
        pool: ReplicaPool,
        clock: Clock,
        hooks: tuple[CallHooks, ...] = (),  # issue 10: metrics, cluster registry
    ) -> None:
        self._settings = settings
        self._hooks = hooks
        self._pool = pool
        self._clock = clock
        self._calls: dict[str, Call] = {}
        self._owners: dict[str, Owner] = {}
        self._ended: OrderedDict[str, tuple[Owner, dict[str, Any]]] = OrderedDict()
        self._admitting = 0
        self._sessions: dict[str, Callable[[str], None]] = {}
        """WebSocket sessions (signaling/realtime_ws.py): their stop functions."""
        self._session_keys: dict[str, str] = {}
        """The API key each WebSocket session was opened with (for its ``max_calls``)."""
        self._tasks: asyncio.TaskGroup | None = None
        self.total_calls = 0
        self.recordings = Recordings(settings.recording)

    @property
    def active(self) -> int:
        return len(self._calls) + len(self._sessions)

    @property
    def max_calls(self) -> int:
        return self._settings.server.max_calls

    def bind(self, tasks: asyncio.TaskGroup) -> None:
        """Run calls in ``tasks`` (the app's lifetime TaskGroup)."""
        self._tasks = tasks

    async def create(
        self,
        request: CallRequest,
        voice: NDArray[np.float32] | None,
        principal: Principal = ANONYMOUS,
        call_id: str | None = None,  # issue 10: a gateway names the calls it places here
    ) -> Admitted:
        """Admit, negotiate and start a call; ``voice`` is a 16 kHz mono float32 clip.

        Raises ApiError: 503 ``busy`` (with Retry-After) at the call limit or with the engine
        queue full, 503 ``not_ready`` while the engine warms up, 400 for an offer that cannot
        be answered (``invalid_sdp``, ``unsupported_codec``)."""
        if self._tasks is None:
            raise ApiError(503, "not_ready", "the server is starting")
        mode = CallMode(request.session.mode)
        self._check_key(principal)
        self.recordings.check(request.session)  # recording: refused before admission
        if self.active + self._admitting >= self.max_calls:
            raise busy(f"the server is at its limit of {self.max_calls} calls", RETRY_AFTER_S)
        source: EngineSource | None = None
        queued = False
        if mode is CallMode.ENGINE:
            if not self._pool.ready:
                raise ApiError(
                    503,
                    "not_ready",
                    self._pool.error or "the engine is still warming up",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            config = SessionConfig(
                instructions=request.session.instructions,
                language=Language(request.session.language),
                voice=voice,
            )
            try:
                lent = self._pool.lend(config)
                source, queued = lent, lent.queued
            except EngineBusy:
                raise busy(
                    f"every engine replica is in a call and {self._pool.queued} calls wait",
                    RETRY_AFTER_S,
                ) from None
        if call_id in self._calls or call_id in self._ended:  # issue 10
            if source is not None:
                await source.close(None)
            raise ApiError(409, "call_exists", f"a call with id {call_id!r} exists already")
        self._admitting += 1
        call_id = call_id or new_call_id()
        self._owners[call_id] = Owner.of(principal)
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
            self._owners.pop(call_id, None)
            if isinstance(exc, Exception):
                raise to_api_error(exc, f"negotiating call {call_id}") from None
            raise
        finally:
            self._admitting -= 1
        self._calls[call_id] = call
        self.total_calls += 1
        for hook in self._hooks:  # issue 10
            hook.admitted(call, queued)
        self.recordings.attach(call, request.session)  # recording: when asked, with consent
        self._tasks.create_task(self._run(call, source), name=f"call:{call_id}")
        log.info(
            "call admitted",
            extra={"call_id": call_id, "mode": mode.value, "key": principal.key or None},
        )
        return Admitted(call_id, answer)

    async def _run(self, call: Call, source: EngineSource | None) -> None:
        bind_call_id(call.call_id)  # issue 10: on every log line of the call's tasks
        try:
            await call.run(source)
        except Exception:
            log.exception("call %s crashed", call.call_id)
        finally:
            self._calls.pop(call.call_id, None)
            owner = self._owners.pop(call.call_id, Owner.of(ANONYMOUS))
            self._ended[call.call_id] = (owner, call.snapshot())
            while len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)
            for hook in self._hooks:  # issue 10
                try:
                    await hook.ended(call)
                except Exception:
                    log.exception("a hook failed on the end of call %s", call.call_id)

    def calls_of(self, key: str) -> int:
        """Live calls and WebSocket sessions started with API key ``key`` (or with its
        tokens)."""
        calls = sum(1 for owner in self._owners.values() if owner.key == key)
        return calls + sum(1 for k in self._session_keys.values() if k == key)

    def live(self, call_id: str, principal: Principal = ANONYMOUS) -> Call:
        """The call ``call_id`` while it runs; raises ApiError 404 once it has ended, when
        there never was one, or when ``principal`` does not own it (whose calls exist is
        nobody else's business)."""
        call = self._calls.get(call_id)
        owner = self._owners.get(call_id)
        if call is None or owner is None or not owner.admits(principal):
            raise ApiError(404, "unknown_call", f"no live call with id {call_id!r}")
        return call

    def snapshot(self, call_id: str, principal: Principal = ANONYMOUS) -> dict[str, Any]:
        """The call's state, counters and timings (also for a recently ended call)."""
        call = self._calls.get(call_id)
        owner = self._owners.get(call_id)
        if call is not None and owner is not None and owner.admits(principal):
            return call.snapshot()
        ended = self._ended.get(call_id)
        if ended is not None and ended[0].admits(principal):
            return ended[1]
        raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")

    async def end(
        self, call_id: str, principal: Principal = ANONYMOUS, wait_s: float = 15.0
    ) -> None:
        """Hang up a call and wait (bounded) until everything it held is freed."""
        call = self._calls.get(call_id)
        owner = self._owners.get(call_id)
        if call is None or owner is None or not owner.admits(principal):
            ended = self._ended.get(call_id)
            if ended is None or not ended[0].admits(principal):
                raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")
            return
        call.stop("deleted")
        try:
            async with asyncio.timeout(wait_s):
                await call.finished.wait()
        except TimeoutError:
            log.warning("call %s still ending after %.0f s", call_id, wait_s)

    def live_ids(self) -> list[str]:
        """Ids of the calls and WebSocket sessions this process holds now (issue 10: the
        worker heartbeat)."""
        return [*self._calls, *self._sessions]

    def stop_all(self, reason: str) -> None:
        for call in list(self._calls.values()):
            call.stop(reason)
        for stop in list(self._sessions.values()):
            stop(reason)

    # ------------------------------------------------ WebSocket sessions (/v1/realtime)

    def admit_session(
        self, session_id: str, stop: Callable[[str], None], principal: Principal = ANONYMOUS
    ) -> None:
        """Count a /v1/realtime session against ``server.max_calls`` and its key's
        ``max_calls`` like a call until ``release_session``; ``stop(reason)`` ends it at
        shutdown.  Raises ApiError (``not_ready``, ``too_many_calls``, ``busy``) on refusal."""
        if self._tasks is None:
            raise ApiError(503, "not_ready", "the server is starting")
        self._check_key(principal)
        if self.active + self._admitting >= self.max_calls:
            raise busy(f"the server is at its limit of {self.max_calls} calls", RETRY_AFTER_S)
        self._sessions[session_id] = stop
        self._session_keys[session_id] = principal.key
        self.total_calls += 1

    def release_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._session_keys.pop(session_id, None)

    def _check_key(self, principal: Principal) -> None:
        if principal.max_calls and self.calls_of(principal.key) >= principal.max_calls:
            raise ApiError(
                429,
                "too_many_calls",
                f"key {principal.key!r} is at its limit of {principal.max_calls} calls",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

"""``GET /v1/realtime?mode=audio|video``: the MiniCPM-o Realtime V1 WebSocket protocol.

The official ``openbmb-realtime`` client works against it unchanged (docs/PROTOCOL.md says
what is supported and what differs from upstream).  The session runtime is
``realtime.ws_call.WsSession``; this module only does the transport: it upgrades the
request, admits the session against the same limits as WebRTC calls (the key's
``max_calls``, a call token's one call, ``server.max_calls``, the replica pool:
``CallManager.admit_session``), feeds the session the client's
messages and writes its events back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from aiohttp import WSCloseCode, WSMsgType, web

from omni.api import EngineSource, QueueCallback, SessionConfig
from omni.errors import EngineBusy
from omni.pool import PoolSource, QueuePosition, ReplicaPool, Ticket
from realtime.clock import LoopClock
from realtime.ws_call import WsSession
from realtime.ws_wire import MODES, error_event, event
from signaling.app_keys import AUTH, CALLS, POOL, SETTINGS
from signaling.auth import principal_of
from signaling.errors import RETRY_AFTER_S, ApiError, busy
from signaling.hooks import CLAIMED_CALL_ID

log = logging.getLogger(__name__)

SUBPROTOCOL = "map.realtime"
"""The subprotocol the official client asks for."""
HEARTBEAT_S = 15.0
"""The server pings this often; a client that does not answer within half of it is gone."""
_DRAIN_S = 2.0


class _PoolLending:
    """A claim on one of the pool's replicas; its session settings come with session.init."""

    def __init__(self, pool: ReplicaPool, ticket: Ticket) -> None:
        self._pool = pool
        self._ticket = ticket

    @property
    def queued(self) -> bool:
        return self._ticket.queued

    async def wait(self, on_queue: QueueCallback) -> None:
        def told(where: QueuePosition) -> None:
            on_queue(where.position, where.estimated_wait_s, where.queue_length)

        await self._ticket.wait(told)

    def source(self, config: SessionConfig) -> EngineSource:
        return PoolSource(self._pool, self._ticket, config)

    def cancel(self) -> None:
        self._ticket.cancel()


async def realtime(request: web.Request) -> web.WebSocketResponse:
    """The auth middleware has checked the key or token (401 before the upgrade); every
    other refusal is an ``error`` event after it: the key's ``max_calls`` (sessions count
    like calls), a spent call token (``token_used``: it opens one session at most, as it
    starts one call; a refused session leaves it unspent), the server's limit, the pool."""
    settings = request.app[SETTINGS]
    config = settings.realtime_ws
    ws, mode = await upgrade(request)
    if mode is None:
        return ws
    calls = request.app[CALLS]
    pool = request.app[POOL]
    principal = principal_of(request)
    session = WsSession(
        # issue 10: a session a cluster gateway placed here has the id it claimed
        request.get(CLAIMED_CALL_ID) or "rt_" + secrets.token_hex(8),
        mode,
        engine_name=pool.info.name,
        call_config=settings.call,
        config=config,
        clock=LoopClock(),
    )
    auth = request.app[AUTH]
    try:
        auth.spend(principal)
        try:
            calls.admit_session(session.session_id, session.stop, principal)
            ticket = _join(pool)
        except BaseException:
            calls.release_session(session.session_id)
            auth.refund(principal)  # no session started: the token may try again
            raise
    except ApiError as exc:
        await refuse(ws, exc.code, exc.message)
        return ws
    log.info("realtime session admitted", extra={"session_id": session.session_id, "mode": mode})
    try:
        await _serve(ws, session, _PoolLending(pool, ticket))
    finally:
        calls.release_session(session.session_id)
    return ws


def _join(pool: ReplicaPool) -> Ticket:
    if not pool.ready:
        raise ApiError(503, "not_ready", pool.error or "the engine is still warming up")
    try:
        return pool.join()
    except EngineBusy:
        raise busy(
            f"every engine replica is in a call and {pool.queued} calls wait", RETRY_AFTER_S
        ) from None


async def upgrade(request: web.Request) -> tuple[web.WebSocketResponse, str | None]:
    """The client's WebSocket, upgraded (``map.realtime``, the message limit, heartbeats),
    and the session's mode; None when the mode was refused (the socket is closed then)."""
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        max_msg_size=request.app[SETTINGS].realtime_ws.max_message_bytes,
        heartbeat=HEARTBEAT_S,
        compress=False,
    )
    await ws.prepare(request)
    mode = request.query.get("mode", "audio")
    if mode not in MODES:
        await refuse(ws, "invalid_mode", f"mode must be audio or video, not {mode[:32]!r}")
        return ws, None
    return ws, mode


async def refuse(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_str(error_event(code, message))
        await ws.send_str(event("session.closed", reason=code))
    await ws.close(code=WSCloseCode.TRY_AGAIN_LATER if code == "busy" else WSCloseCode.OK)


async def _serve(ws: web.WebSocketResponse, session: WsSession, lending: _PoolLending) -> None:
    runner = asyncio.create_task(session.run(lending), name=f"{session.session_id}:run")
    writer = asyncio.create_task(_write(ws, session), name=f"{session.session_id}:write")
    reader = asyncio.create_task(_read(ws, session), name=f"{session.session_id}:read")
    try:
        await runner
    finally:
        session.stop("server_shutdown")
        reader.cancel()
        with contextlib.suppress(TimeoutError, Exception):
            async with asyncio.timeout(_DRAIN_S):
                await writer
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        await ws.close()


async def _read(ws: web.WebSocketResponse, session: WsSession) -> None:
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await session.receive(message.data)
            elif message.type is WSMsgType.ERROR:
                exc = ws.exception()
                log.info("realtime session %s: %s", session.session_id, exc)
                session.stop("message_too_large" if ws.close_code == 1009 else "protocol_error")
                return
    finally:
        session.stop("client_gone")


async def _write(ws: web.WebSocketResponse, session: WsSession) -> None:
    while (text := await session.outbox.get()) is not None:
        if ws.closed:
            return
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError):
            session.stop("client_gone")
            return

"""``GET /v1/realtime`` at a gateway: the session runs on a worker, the gateway relays it.

The gateway upgrades the client's request, claims a slot for the session (within the key's
``max_calls`` and the token's one session across the cluster), opens the same WebSocket on
that worker and copies every message both ways until either side ends; the worker's close
code goes back to the client.  A refusal (cluster full, key at its limit, no worker) reaches
the client as it does from a single process: an ``error`` event, ``session.closed``, close.
A session the worker never created (it refused it, or the client left first) gives its
call token back.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import Counter, Gauge

from signaling.auth import principal_of
from signaling.cluster.registry import Claim
from signaling.cluster.router import ROUTER
from signaling.errors import ApiError
from signaling.metrics import Metrics
from signaling.realtime_ws import HEARTBEAT_S, SUBPROTOCOL, refuse, upgrade

log = logging.getLogger(__name__)

_WORKER_MAX_MESSAGE = 16 * 1024 * 1024
"""What a worker may send in one message (its events carry base64 audio)."""

AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class RelayMetrics:
    """What the gateway's /metrics says of the sessions it relays."""

    def __init__(self, metrics: Metrics) -> None:
        r, w = metrics.registry, ("worker",)
        self.live = Gauge(
            "omnirtc_relayed_sessions", "/v1/realtime sessions this gateway relays now", w,
            registry=r,
        ).labels(metrics.worker)  # fmt: skip
        messages = Counter(
            "omnirtc_relayed_messages",
            "/v1/realtime messages relayed, by direction (up: client to worker)",
            [*w, "direction"],
            registry=r,
        )
        self.up = messages.labels(metrics.worker, "up")
        self.down = messages.labels(metrics.worker, "down")


RELAY_METRICS = web.AppKey("relay_metrics", RelayMetrics)


async def realtime(request: web.Request) -> web.WebSocketResponse:
    client, mode = await upgrade(request)
    if mode is None:  # refused before a slot is claimed for it
        return client
    router = request.app[ROUTER]
    principal = principal_of(request)
    try:
        worker, claim = await router.open_websocket(
            request.path_qs,
            (SUBPROTOCOL,),
            headers=request.headers,
            principal=principal,
            max_msg_size=_WORKER_MAX_MESSAGE,
            heartbeat_s=HEARTBEAT_S,
        )
    except ApiError as exc:
        await refuse(client, exc.code, exc.message)
        return client
    counts = request.app[RELAY_METRICS]
    relay = _Relay(client, worker, counts)
    counts.live.inc()
    try:
        await relay.run()
    finally:
        counts.live.dec()
        await worker.close()
        code = worker.close_code if worker.close_code is not None else WSCloseCode.OK
        await client.close(code=code)
        if not relay.created:
            await router.release(claim, principal)  # no session started: the token is back
        _log_end(claim, relay)
    return client


class _Relay:
    """Copies messages both ways until one side closes (or fails)."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        worker: aiohttp.ClientWebSocketResponse,
        counts: RelayMetrics,
    ) -> None:
        self.client = client
        self.worker = worker
        self._counts = counts
        self.created = False
        """Whether the worker said session.created (a token is spent from then on)."""
        self.messages = 0

    async def run(self) -> None:
        up = asyncio.create_task(self._copy(self.client, self.worker, watch=False), name="ws:up")
        down = asyncio.create_task(self._copy(self.worker, self.client, watch=True), name="ws:down")
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _copy(self, source: AnyWebSocket, target: AnyWebSocket, watch: bool) -> None:
        async for message in source:
            if message.type is WSMsgType.TEXT:
                if watch and not self.created:
                    self.created = _is_created(message.data)
                await target.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await target.send_bytes(message.data)
            elif message.type is WSMsgType.ERROR:
                return
            self.messages += 1
            (self._counts.down if watch else self._counts.up).inc()


def _is_created(text: str) -> bool:
    if "session.created" not in text:
        return False
    try:
        return bool(json.loads(text).get("type") == "session.created")
    except (ValueError, AttributeError):
        return False


def _log_end(claim: Claim, relay: _Relay) -> None:
    log.info(
        "relayed session ended",
        extra={
            "call_id": claim.call_id,
            "worker": claim.worker_id,
            "messages": relay.messages,
            "session_created": relay.created,
        },
    )

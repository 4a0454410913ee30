"""The worker role: register in Redis, take the calls gateways place here, free their slots.

A worker is the ordinary app (media, engines, the call API) plus this:

- a heartbeat that registers the worker (engine, replicas, free slots, queue, the API
  address gateways reach and the media address clients reach) with a TTL, and re-registers
  its live calls, so a restarted Redis learns them again and a dead worker disappears;
- a middleware that accepts an offer, or a ``/v1/realtime`` WebSocket session, only with the
  call id of a slot a gateway claimed here (``Omnirtc-Call-Id``), so nothing bypasses the
  cluster's admission;
- call hooks that give the slot back when the call ends, however it ends (a WebSocket
  session's slot goes back when its request ends).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from omni.pool import ReplicaPool
from realtime.session import Call
from signaling.app_keys import CALLS, POOL
from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import RedisRegistry, RegistryUnavailable, registry_unavailable
from signaling.errors import ApiError, Handler
from signaling.hooks import CLAIMED_CALL_ID
from signaling.sessions import CallManager
from signaling.settings import Settings

log = logging.getLogger(__name__)

CALL_ID_HEADER = "Omnirtc-Call-Id"
CALL_ID = re.compile(r"call_[0-9a-f]{16}(?:[0-9a-f]{16})?")
OFFER_PATHS = ("/v1/calls", "/v1/whip")
REALTIME_PATH = "/v1/realtime"
_CALL_S_START = 120.0


def worker_url(settings: Settings) -> str:
    """The API address gateways reach this worker at."""
    cluster, server = settings.cluster, settings.server
    if cluster.advertise_url:
        return cluster.advertise_url.rstrip("/")
    if server.host in ("0.0.0.0", "::", ""):
        raise ValueError(
            "cluster.advertise_url must be set when server.host listens on every interface"
        )
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"http://{host}:{server.port}"


def default_worker_id(settings: Settings) -> str:
    return settings.cluster.worker_id or f"{socket.gethostname()}-{settings.server.port}"


class ClusterWorker:
    """CallHooks, an aiohttp middleware and a cleanup context (see the module docstring)."""

    def __init__(
        self, settings: Settings, registry: RedisRegistry, worker_id: str | None = None
    ) -> None:
        self.settings = settings
        self.cluster: ClusterSettings = settings.cluster
        self.registry = registry
        self.worker_id = worker_id or default_worker_id(settings)
        self.url = worker_url(settings)
        peer = settings.webrtc
        self.media = peer.announced_address or ",".join(peer.host_addresses) or "auto"
        self._pending: set[str] = set()
        self._started: dict[str, float] = {}
        self._call_s = _CALL_S_START
        self._serving = False
        self._left = False
        """Deregistered (shutting down): the registry no longer holds our slots."""
        self.reachable: bool | None = None
        """Whether the last heartbeat reached Redis (None before the first)."""

    @property
    def claim_grace_s(self) -> float:
        """How long a claim may wait for its offer before the heartbeat frees it."""
        return self.cluster.worker_timeout_s + 2 * self.cluster.heartbeat_s

    # ------------------------------------------------------------ admission

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _takes_a_slot(request):
            return await handler(request)
        call_id = request.headers.get(CALL_ID_HEADER)
        if call_id is None:
            raise ApiError(
                403,
                "gateway_only",
                "this is a cluster worker: place calls through a gateway",
            )
        if not CALL_ID.fullmatch(call_id):
            raise ApiError(400, "invalid_call_id", f"{CALL_ID_HEADER} is not a call id")
        try:
            async with asyncio.timeout(self.cluster.redis_timeout_s):
                held = await self.registry.holds(self.worker_id, call_id)
        except (RegistryUnavailable, TimeoutError):
            raise registry_unavailable() from None
        if not held:
            raise ApiError(409, "no_claim", f"no slot was claimed here for {call_id}")
        request[CLAIMED_CALL_ID] = call_id
        self._pending.add(call_id)
        admitted = False
        try:
            response = await handler(request)
            # A WebSocket session's request lasts as long as the session: it is over now.
            admitted = response.status == 201 and request.path != REALTIME_PATH
            return response
        finally:
            self._pending.discard(call_id)
            if not admitted:
                await self._release(call_id)

    # ------------------------------------------------------------ CallHooks

    def admitted(self, call: Call, queued: bool) -> None:
        self._started[call.call_id] = call.clock.now()

    async def ended(self, call: Call) -> None:
        started = self._started.pop(call.call_id, None)
        if started is not None:
            self._call_s = 0.8 * self._call_s + 0.2 * (call.clock.now() - started)
        await self._release(call.call_id)

    async def _release(self, call_id: str) -> None:
        if self._left:
            return  # our slots left the registry with us
        try:
            async with asyncio.timeout(self.cluster.redis_timeout_s):
                await self.registry.release(self.worker_id, call_id)
        except (RegistryUnavailable, TimeoutError) as exc:
            # The next heartbeat that reaches Redis frees it (the call is no longer live).
            log.warning("could not free the slot of %s now: %s", call_id, exc)

    # ------------------------------------------------------------ registration

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: heartbeat while the app runs; leave the registry at shutdown."""
        pool, calls = app[POOL], app[CALLS]
        self._serving = True
        task = asyncio.get_running_loop().create_task(
            self._heartbeats(pool, calls), name="cluster-heartbeat"
        )
        yield
        self._serving = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._left = True
        try:
            async with asyncio.timeout(self.cluster.redis_timeout_s):
                await self.registry.deregister(self.worker_id)
        except (RegistryUnavailable, TimeoutError) as exc:
            log.warning("could not leave the registry (its entry expires): %s", exc)
        # The calls still running end after this (the app's call context is left next).
        await self.registry.close()

    def info(self, pool: ReplicaPool) -> dict[str, str | int | float]:
        # What this process can take: replicas (up to server.max_calls), and queue places
        # within both the pool's queue and the calls left under server.max_calls.
        max_calls = self.settings.server.max_calls
        slots = min(pool.size, max_calls)
        return {
            "url": self.url,
            "engine": pool.info.name,
            "slots": slots,
            "free": pool.free,
            "queued": pool.queued,
            "max_queue": max(0, min(pool.max_queue, max_calls - slots)),
            "ready": int(pool.ready and self._serving),
            "media": self.media,
            "call_s": round(self._call_s, 1),
            "pid": os.getpid(),
        }

    async def beat(self, pool: ReplicaPool, calls: CallManager) -> None:
        """One heartbeat (raises RegistryUnavailable or TimeoutError)."""
        live = [*calls.live_ids(), *self._pending]
        async with asyncio.timeout(2 * self.cluster.redis_timeout_s):
            freed = await self.registry.heartbeat(
                self.worker_id,
                self.info(pool),
                live,
                ttl_s=self.cluster.worker_ttl_s,
                grace_s=self.claim_grace_s,
            )
        if freed:
            log.warning("freed %d slot(s) claimed here that no call took", freed)

    async def _heartbeats(self, pool: ReplicaPool, calls: CallManager) -> None:
        while True:
            try:
                await self.beat(pool, calls)
            except (RegistryUnavailable, TimeoutError) as exc:
                if self.reachable is not False:
                    log.warning("cannot reach the registry (live calls go on): %s", exc)
                self.reachable = False
            else:
                if self.reachable is not True:
                    log.info(
                        "registered as worker %s at %s",
                        self.worker_id,
                        self.url,
                        extra={"worker": self.worker_id, "calls": len(calls.live_ids())},
                    )
                self.reachable = True
            await asyncio.sleep(self.cluster.heartbeat_s)


def _takes_a_slot(request: web.Request) -> bool:
    if request.method == "POST":
        return request.path in OFFER_PATHS
    return request.method == "GET" and request.path == REALTIME_PATH

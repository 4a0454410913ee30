"""The gateway role's app: takes offers and routes each call to a worker (no media here).

It serves the same call API as a single process (``POST /v1/calls``, ``GET``/``DELETE
/v1/calls/{id}``, WHIP, the ``/v1/realtime`` WebSocket: see ``ws_relay``), the call page,
``/healthz``, ``/readyz`` (ready while Redis answers and a worker is ready) and ``/metrics``
(its admissions, plus every worker's slots as the registry sees them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter, Gauge, Histogram

from signaling import handlers
from signaling.app import base_app
from signaling.auth import principal_of
from signaling.cluster import ws_relay
from signaling.cluster.registry import Claim, RedisRegistry, RegistryUnavailable
from signaling.cluster.router import ROUTER, Relayed, Router, check_offer_off_loop
from signaling.errors import ApiError
from signaling.metrics import (
    ADMISSION_BUCKETS,
    Metrics,
    default_worker_name,
    metrics_handler,
)
from signaling.settings import Settings
from signaling.whip import SDP

log = logging.getLogger(__name__)


class GatewayMetrics:
    """What only a gateway sees: claim round trips, where calls went, the cluster's slots."""

    def __init__(self, metrics: Metrics, registry: RedisRegistry) -> None:
        r, w = metrics.registry, ("worker",)
        self._metrics = metrics
        self._registry = registry
        self._claim_s = Histogram(
            "omnirtc_registry_claim_seconds",
            "Round trip of one atomic slot claim in Redis",
            w,
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        self._placed = Counter(
            "omnirtc_calls_placed",
            "Calls this gateway placed, by worker and placement (slot, queued)",
            [*w, "target", "placement"],
            registry=r,
        )
        self._workers = Gauge("omnirtc_cluster_workers", "Live workers", w, registry=r)
        self._slots = Gauge(
            "omnirtc_cluster_slots", "Replica slots per worker", [*w, "target"], registry=r
        )
        self._used = Gauge(
            "omnirtc_cluster_slots_used",
            "Slots and queue places claimed per worker",
            [*w, "target"],
            registry=r,
        )
        self._queued = Gauge(
            "omnirtc_cluster_queue_length", "Calls waiting across the cluster", w, registry=r
        )
        self._up = Gauge("omnirtc_registry_up", "Whether Redis answered", w, registry=r)

    def claimed(self, claim: Claim, seconds: float) -> None:
        worker = self._metrics.worker
        self._claim_s.labels(worker).observe(seconds)
        if claim.worker_id:
            self._placed.labels(worker, claim.worker_id, claim.placement.value).inc()

    async def refresh(self) -> None:
        worker = self._metrics.worker
        try:
            workers = await self._registry.workers()
        except RegistryUnavailable:
            self._up.labels(worker).set(0)
            return
        self._up.labels(worker).set(1)
        self._workers.labels(worker).set(len(workers))
        self._slots.clear()
        self._used.clear()
        for info in workers:
            self._slots.labels(worker, info.worker_id).set(info.slots)
            self._used.labels(worker, info.worker_id).set(info.used)
        self._queued.labels(worker).set(sum(w.queued for w in workers))


def create_gateway_app(
    settings: Settings, registry: RedisRegistry, name: str | None = None
) -> web.Application:
    """The gateway's app (``name``: its name in metrics; default gateway-<host>-<port>)."""
    name = name or settings.cluster.worker_id or f"gateway-{default_worker_name()}"
    metrics = Metrics(name)
    gateway_metrics = GatewayMetrics(metrics, registry)
    metrics.refresh = gateway_metrics.refresh
    # Clients authenticate here first (nothing is claimed for a refused request), and again
    # at the worker, which owns the call (gateways and workers share the auth settings).
    app = base_app(settings, metrics)
    app[ws_relay.RELAY_METRICS] = ws_relay.RelayMetrics(metrics)
    app[ROUTER] = Router(
        registry, settings.cluster, gateway_metrics.claimed, token_ttl_s=settings.auth.token_ttl_s
    )
    app.cleanup_ctx.append(_lifetime)
    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls/{call_id}", call_request)
    app.router.add_delete("/v1/calls/{call_id}", call_request)
    app.router.add_post("/v1/tokens", handlers.create_token)
    app.router.add_post("/v1/whip", create_whip)
    app.router.add_get("/v1/realtime", ws_relay.realtime)
    app.router.add_patch("/v1/whip/{call_id}", call_request)
    app.router.add_delete("/v1/whip/{call_id}", call_request)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    router = app[ROUTER]
    await router.start()
    yield
    await router.close()
    await router.registry.close()


def _response(relayed: Relayed) -> web.Response:
    return web.Response(
        body=relayed.body, status=relayed.status, headers=CIMultiDict(relayed.headers)
    )


async def create_call(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the offer as application/json, not {request.content_type or 'nothing'}",
        )
    raw = await request.read()
    await check_offer_off_loop(raw)
    return _response(
        await request.app[ROUTER].place(
            raw, "application/json", headers=request.headers, principal=principal_of(request)
        )
    )


async def create_whip(request: web.Request) -> web.Response:
    """A WHIP offer (application/sdp, options in the query); the worker checks the SDP."""
    if request.content_type != SDP:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the offer as {SDP}, not {request.content_type or 'nothing'}",
        )
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "invalid_sdp", "the offer is empty")
    return _response(
        await request.app[ROUTER].place(
            raw, SDP, request.path_qs, headers=request.headers, principal=principal_of(request)
        )
    )


async def call_request(request: web.Request) -> web.Response:
    """Any request about one call (JSON API or WHIP resource), relayed to its worker."""
    call_id = request.match_info["call_id"]
    router = request.app[ROUTER]
    body = await request.read() if request.can_read_body else None
    relayed = await router.to_call(
        call_id, request.method, request.path, body=body, headers=request.headers
    )
    return _response(relayed)


async def readyz(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    try:
        workers = await router.registry.workers()
    except RegistryUnavailable as exc:
        body = {"ready": False, "role": "gateway", "error": str(exc)}
        return web.json_response(body, status=503)
    ready = [w for w in workers if w.ready]
    body = {
        "ready": bool(ready),
        "role": "gateway",
        "workers": len(workers),
        "workers_ready": len(ready),
        "replicas": sum(w.slots for w in ready),
        "replicas_free": sum(w.free for w in ready),
        "queued": sum(w.queued for w in workers),
        "max_queue": router.settings.max_queue,
        "engines": sorted({w.engine for w in ready}),
    }
    if not ready:
        body["error"] = "no worker is ready"
    return web.json_response(body, status=200 if ready else 503)

"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from omni.pool import ReplicaPool
from realtime.clock import LoopClock
from realtime.patches import install_patches
from signaling import handlers, realtime_ws, whip
from signaling.app_keys import AUTH, CALLS, POOL, SETTINGS, WEB_DIR
from signaling.auth import Authenticator, auth_middleware
from signaling.body_timeout import body_timeout_middleware
from signaling.cluster.worker import ClusterWorker
from signaling.cors import CorsPolicy, cors_middleware
from signaling.errors import MAX_BODY_BYTES, error_middleware
from signaling.metrics import METRICS, Metrics, default_worker_name, metrics_handler
from signaling.recordings import delete_call_recording
from signaling.sessions import CallManager
from signaling.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def base_app(
    settings: Settings, metrics: Metrics, extra: list[Middleware] | None = None
) -> web.Application:
    """What every role's app shares: the call page's folder, the middleware stack (with
    ``extra`` just inside auth), the settings, metrics and authenticator."""
    web_dir = Path(settings.server.web_dir) if settings.server.web_dir else DEFAULT_WEB_DIR
    if not (web_dir / "index.html").is_file():
        raise FileNotFoundError(f"no call page at {web_dir / 'index.html'}; set server.web_dir")
    authenticator = Authenticator(settings.auth)
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        # Outermost first: CORS headers go on every answer, errors included; the body
        # timeout runs inside the error mapper, which turns it into a 408.
        middlewares=[
            cors_middleware(CorsPolicy.from_settings(settings.server.cors_origins)),
            metrics.middleware,
            error_middleware,
            auth_middleware(authenticator),
            *(extra or []),
            body_timeout_middleware(settings.server.body_timeout_s),
        ],
    )
    app[MAX_BODY_BYTES] = settings.server.max_body_bytes
    app[SETTINGS] = settings
    app[WEB_DIR] = web_dir
    app[METRICS] = metrics
    app[AUTH] = authenticator
    app.router.add_get("/", handlers.index)
    app.router.add_static("/static/", web_dir, follow_symlinks=False)
    return app


def create_app(
    settings: Settings, pool: ReplicaPool, worker: ClusterWorker | None = None
) -> web.Application:
    """Build the app; the engine pool warms up in the background once it starts.
    With ``worker`` it is a cluster worker: it registers in Redis and takes the calls
    gateways place on it."""
    install_patches()
    # issue 10: metrics, and the cluster worker's admission check, registry and hooks
    metrics = Metrics(worker.worker_id if worker else default_worker_name())
    hooks = (metrics, worker) if worker else (metrics,)
    app = base_app(settings, metrics, [worker.middleware] if worker else [])
    app[POOL] = pool
    app[CALLS] = CallManager(settings, pool, LoopClock(), hooks)
    metrics.refresh = _gauges(metrics, pool, app[CALLS])
    app.cleanup_ctx.append(_lifetime)
    app.cleanup_ctx.append(metrics.lifetime)
    if worker is not None:
        app.cleanup_ctx.append(worker.lifetime)  # left first at shutdown: no new calls
    app.router.add_post("/v1/calls", handlers.create_call)
    app.router.add_get("/v1/calls/{call_id}", handlers.get_call)
    app.router.add_delete("/v1/calls/{call_id}", handlers.delete_call)
    app.router.add_post("/v1/tokens", handlers.create_token)
    app.router.add_post("/v1/whip", whip.create)
    app.router.add_patch("/v1/whip/{call_id}", whip.patch)
    app.router.add_delete("/v1/whip/{call_id}", whip.delete)
    app.router.add_delete("/v1/calls/{call_id}/recording", delete_call_recording)
    app.router.add_get("/v1/realtime", realtime_ws.realtime)  # MiniCPM-o Realtime V1 WebSocket
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """Warm the engine up in the background, run every call in one TaskGroup, and at
    shutdown end the calls and free the replicas."""
    pool = app[POOL]
    calls = app[CALLS]
    async with asyncio.TaskGroup() as tasks:
        calls.bind(tasks)
        warmup = tasks.create_task(_warm_up(pool), name="engine-warmup")
        yield
        warmup.cancel()
        calls.stop_all("server_shutdown")
    await pool.stop()


def _gauges(
    metrics: Metrics, pool: ReplicaPool, calls: CallManager
) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        worker = metrics.worker
        metrics.active.labels(worker).set(calls.active)
        metrics.queue.labels(worker).set(pool.queued)
        metrics.replicas.labels(worker).set(pool.size)
        metrics.replicas_free.labels(worker).set(pool.free)

    return refresh


async def _warm_up(pool: ReplicaPool) -> None:
    try:
        await pool.start()
    except Exception as exc:
        pool.error = pool.error or f"{pool.info.name} failed to start: {exc}"
        log.exception("engine %s failed to start; /readyz stays 503", pool.info.name)

"""A cluster for tests: a real Redis, gateways and workers in this process (aiohttp test
servers) or as `omnirtc serve --role worker` processes that a test can kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from omni.engines import build_engine
from omni.pool import ReplicaPool
from signaling.app import create_app
from signaling.cluster.gateway import create_gateway_app
from signaling.cluster.registry import RedisRegistry
from signaling.cluster.worker import ClusterWorker
from signaling.settings import Settings
from tests.conftest import test_settings
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAST = {"cluster__heartbeat_s": 0.2, "cluster__worker_ttl_s": 1.0, "cluster__redis_timeout_s": 0.5}
"""A dead worker is gone within a second (the tests wait longer)."""


def cluster_settings(redis: RedisServer, **overrides: Any) -> Settings:
    return test_settings(
        cluster__redis_url=redis.url, cluster__key_prefix="t", **{**FAST, **overrides}
    )


class Cluster:
    """Starts gateways and workers against one Redis; stops everything it started."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self._servers: list[TestServer] = []
        self._processes: list[asyncio.subprocess.Process] = []

    async def gateway(self, **overrides: Any) -> str:
        # (Settings are validated off the loop: pydantic's schema building takes a while.)
        settings = await asyncio.to_thread(
            cluster_settings, self.redis, cluster__role="gateway", **overrides
        )
        app = create_gateway_app(settings, RedisRegistry.connect(settings.cluster), "gw")
        return await self._serve(app, free_port())

    async def worker(self, name: str, calls: int = 1, queue: int = 0, **overrides: Any) -> str:
        """An in-process worker with ``calls`` echo replicas and room for ``queue`` calls
        waiting for one; returns its URL."""
        port = free_port()
        settings = await asyncio.to_thread(
            cluster_settings,
            self.redis,
            cluster__role="worker",
            cluster__worker_id=name,
            cluster__advertise_url=f"http://127.0.0.1:{port}",
            server__max_calls=calls + queue,
            engine__max_queue=queue,
            engine__replicas=calls,
            **overrides,
        )
        engine = build_engine(settings.engine, settings.server.max_calls)
        pool = ReplicaPool(engine, max_queue=settings.engine.max_queue)
        worker = ClusterWorker(settings, RedisRegistry.connect(settings.cluster))
        return await self._serve(create_app(settings, pool, worker), port)

    async def worker_process(
        self, name: str, calls: int = 1, processes: int = 1
    ) -> asyncio.subprocess.Process:
        """`omnirtc serve --role worker` (``processes`` of them, under one supervisor)."""
        port = free_port() if processes == 1 else _free_range(processes)
        env = {
            **os.environ,
            "OMNIRTC_ENGINE__NAME": "echo",
            "OMNIRTC_SERVER__PORT": str(port),
            "OMNIRTC_SERVER__MAX_CALLS": str(calls),
            "OMNIRTC_ENGINE__MAX_QUEUE": "0",
            "OMNIRTC_WEBRTC__HOST_ADDRESSES": '["127.0.0.1"]',
            "OMNIRTC_CLUSTER__WORKER_ID": name,
            "OMNIRTC_CLUSTER__KEY_PREFIX": "t",
            "OMNIRTC_CLUSTER__HEARTBEAT_S": "0.2",
            "OMNIRTC_CLUSTER__WORKER_TTL_S": "1.0",
        }
        process = await asyncio.create_subprocess_exec(
            str(BIN / "omnirtc"), "serve", "--role", "worker", "--redis-url", self.redis.url,
            "--processes", str(processes),
            cwd=ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        self._processes.append(process)
        return process

    async def _serve(self, app: web.Application, port: int) -> str:
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        self._servers.append(server)
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for process in self._processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for server in reversed(self._servers):
            await server.close()


def _free_range(count: int) -> int:
    """A port p with p .. p + count - 1 free (probably)."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


async def ready(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/readyz") as r:
        return dict(await r.json())


async def wait_workers(
    http: aiohttp.ClientSession, gateway: str, count: int, timeout: float = 30
) -> dict[str, Any]:
    """Until the gateway sees exactly ``count`` ready workers."""
    body: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            body = await ready(http, gateway)
            if body.get("workers_ready") == count and body.get("workers") == count:
                return body
            await asyncio.sleep(0.05)


async def post_offer(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/calls", json={"sdp": sdp, "type": "offer"}) as r:
        return r.status, await r.json(), r.headers


async def wait_free(
    http: aiohttp.ClientSession, gateway: str, free: int, timeout: float = 5
) -> dict[str, Any]:
    """Until the gateway sees ``free`` free replicas (a hung-up call frees its slot just
    after its DELETE is answered)."""
    body: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            body = await ready(http, gateway)
            if body.get("replicas_free") == free:
                return body
            await asyncio.sleep(0.02)

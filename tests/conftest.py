"""Shared fixtures: a running omnirtc app on loopback, and an HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from omni.engines import build_engine
from omni.pool import ReplicaPool
from signaling.app import create_app
from signaling.settings import Settings, load_settings
from tests.lite.models import replica, speaker
from tests.support.loop_watch import LoopWatch

__all__ = ["replica", "speaker"]


LOOP_HOLD_LIMIT_S = 0.3
"""Longest an async test's loop may be held up at once: generous for a busy 2-core machine
(a loop with live calls normally runs every few ms), far below what starves a call."""


@pytest.fixture(autouse=True)
async def loop_watch(request: pytest.FixtureRequest) -> AsyncIterator[LoopWatch | None]:
    """Fails an async test whose event loop was held up by blocking work (see LoopWatch)."""
    if not inspect.iscoroutinefunction(request.function):
        yield None
        return
    watch = LoopWatch(LOOP_HOLD_LIMIT_S)
    watch.start()
    try:
        yield watch
    finally:
        await watch.stop()
    watch.check()


@dataclass
class RunningServer:
    url: str
    app: web.Application
    settings: Settings
    pool: ReplicaPool


ServerFactory = Callable[..., Awaitable[RunningServer]]


def test_settings(**overrides: Any) -> Settings:
    """Settings for tests: loopback candidates, fast timeouts, plus ``overrides``."""
    values: dict[str, Any] = {"webrtc.host_addresses": ["127.0.0.1"], "engine.name": "echo"}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(None, environ={}, overrides=values)


@pytest.fixture
async def start_server(loop_watch: LoopWatch | None) -> AsyncIterator[ServerFactory]:
    servers: list[TestServer] = []

    async def start(pool: ReplicaPool | None = None, **overrides: Any) -> RunningServer:
        settings = test_settings(**overrides)
        if pool is None:
            engine = build_engine(settings.engine, settings.server.max_calls)
            pool = ReplicaPool(engine, max_queue=settings.engine.max_queue)
        app = create_app(settings, pool)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        url = str(server.make_url("")).rstrip("/")
        # The engine warms up before any call exists; a model loader may hold the
        # interpreter's lock meanwhile (xllamacpp does, about 0.7 s).
        with loop_watch.excused() if loop_watch is not None else contextlib.nullcontext():
            await _wait_ready(url)
        return RunningServer(url, app, settings, pool)

    yield start
    for server in servers:
        await server.close()


async def _wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{url}/readyz") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session

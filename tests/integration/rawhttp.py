"""The HTTP server as `omnirtc serve` runs it (our runner, not aiohttp's test server), and a
raw HTTP/1.1 client for what no well-behaved client sends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from omni.engines import build_engine
from omni.pool import ReplicaPool
from signaling.app import create_app
from signaling.connections import ConnectionGuard
from signaling.http_server import GuardedAppRunner, HttpLimits
from signaling.settings import Settings
from tests.conftest import test_settings

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    url: str
    port: int
    settings: Settings
    runner: GuardedAppRunner

    @property
    def guard(self) -> ConnectionGuard[web.RequestHandler]:
        guard = self.runner.guard
        assert guard is not None
        return guard


@asynccontextmanager
async def served(**overrides: Any) -> AsyncIterator[Served]:
    """The app behind the runner the entry point uses, on a free loopback port."""
    settings = test_settings(**overrides)
    engine = build_engine(settings.engine, settings.server.max_calls)
    app = create_app(settings, ReplicaPool(engine, max_queue=settings.engine.max_queue))
    runner = GuardedAppRunner(app, HttpLimits.from_settings(settings.server))
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = int(runner.addresses[0][1])
        url = f"http://{HOST}:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.02)
        yield Served(url, port, settings, runner)
    finally:
        await runner.cleanup()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length)
    return RawResponse(status, headers, body)


async def exchange(port: int, raw: bytes, timeout_s: float = 5.0) -> tuple[RawResponse, bool]:
    """Send ``raw`` on a new connection; the response, and whether the server then closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            response = await read_response(reader)
            closed = await reader.read() == b""
        return response, closed
    finally:
        writer.close()

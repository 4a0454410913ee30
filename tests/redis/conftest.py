"""Fixtures of the Redis suite: a real redis-server per test (TESTING.md, Real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.redis_server import RedisServer, available

if not available():
    pytest.skip("redis-server is not installed (make system-deps)", allow_module_level=True)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

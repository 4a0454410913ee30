"""Fixtures of the Redis suite: a real redis-server per test (TESTING.md, Real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import RedisRegistry
from tests.redis.cluster import Cluster
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


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    """Gateways and workers a test starts on that Redis; all stopped at the end."""
    running = Cluster(redis_server)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def registry(redis_server: RedisServer) -> AsyncIterator[RedisRegistry]:
    """A registry client of that Redis, as the cluster's processes use (key prefix "t")."""
    reg = RedisRegistry.connect(ClusterSettings(redis_url=redis_server.url, key_prefix="t"))
    yield reg
    await reg.close()

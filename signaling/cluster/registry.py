"""The worker registry and slot ledger in Redis (redis-py asyncio).

Workers register themselves with a heartbeat (:meth:`RedisRegistry.heartbeat`); gateways
claim a slot on one of them atomically (:meth:`RedisRegistry.claim`, one Lua script), so two
gateways can never book one replica twice.  A slot is given back when its call ends
(:meth:`release`), when the claim is never used (the worker's next heartbeat frees it after a
grace), and when the worker dies (its keys expire).  See :mod:`signaling.cluster.scripts`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from signaling.cluster import scripts
from signaling.cluster.config import ClusterSettings
from signaling.errors import ApiError

log = logging.getLogger(__name__)

OWNER_TTL_S = 24 * 3600
"""How long a live call's owner record lasts without a heartbeat renewing it."""
ENDED_TTL_S = 3600
"""How long GET /v1/calls/<id> of an ended call still reaches its worker."""
MAX_CONNECTIONS = 64


class RegistryUnavailable(RuntimeError):
    """Redis could not be reached or did not answer in time."""


def registry_unavailable() -> ApiError:
    """What a client is told when Redis cannot be reached (live calls are not affected)."""
    return ApiError(
        503, "registry_unavailable", "the registry cannot be reached", {"Retry-After": "1"}
    )


class Placement(enum.StrEnum):
    SLOT = "slot"
    QUEUED = "queued"
    FULL = "full"
    TOKEN_USED = "token_used"
    """The call token has already started a call (on any worker)."""
    KEY_LIMIT = "key_limit"
    """The API key holds its ``max_calls`` across the cluster."""


@dataclass(frozen=True, slots=True)
class Claim:
    placement: Placement
    call_id: str
    worker_id: str = ""
    worker_url: str = ""
    position: int = 0
    """Place in the worker's queue (1 = next), when queued."""
    queued: int = 0
    """Calls waiting across the cluster (this one included)."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who a claim is for, as far as the cluster-wide limits go (the default: nobody in
    particular, with auth off)."""

    key: str = ""
    """The API key's name."""
    max_calls: int = 0
    """Calls the key may hold across the cluster (0: no limit of its own)."""
    token: str = ""
    """The call token's id ('' when the key itself is used)."""
    token_ttl_s: float = 0.0
    """How long a token lives: its spent mark lasts that long."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    url: str
    engine: str
    slots: int
    used: int
    """Slots and queue places claimed on it."""
    max_queue: int
    ready: bool
    media: str
    """The address clients send media to (as registered; the answer SDP carries it)."""
    call_s: float
    """Mean length of its recent calls (for queue estimates)."""

    @property
    def free(self) -> int:
        return max(0, self.slots - self.used)

    @property
    def queued(self) -> int:
        return max(0, self.used - self.slots)


class RedisRegistry:
    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self.prefix = prefix
        self._claim = client.register_script(scripts.CLAIM)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._release = client.register_script(scripts.RELEASE)

    @classmethod
    def connect(cls, settings: ClusterSettings) -> RedisRegistry:
        """A registry on ``settings.redis_url`` (connects lazily, reconnects by itself)."""
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=MAX_CONNECTIONS,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            decode_responses=True,
            # A restarted Redis leaves the pool's idle connections dead: try again on a new
            # one.  Every script is idempotent (a claim for the same call id sets one field).
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        return cls(Redis(connection_pool=pool), settings.key_prefix)

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def heartbeat(
        self,
        worker_id: str,
        info: Mapping[str, str | int | float],
        live_calls: Collection[str],
        *,
        ttl_s: float,
        grace_s: float,
    ) -> int:
        """Register or refresh ``worker_id`` with its live calls; returns stale claims freed."""
        fields: list[str | int | float] = []
        for key, value in info.items():
            fields += [key, value]
        fields += ["ttl_ms", int(ttl_s * 1000)]
        args = [
            self.prefix,
            worker_id,
            int(ttl_s * 1000),
            int(grace_s * 1000),
            OWNER_TTL_S * 1000,
            len(fields) // 2,
            *fields,
            *live_calls,
        ]
        return int(await self._run(self._heartbeat, args))

    async def deregister(self, worker_id: str) -> None:
        """Leave the registry at once (a clean shutdown)."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(f"{self.prefix}:workers", worker_id)
                pipe.delete(f"{self.prefix}:w:{worker_id}", f"{self.prefix}:c:{worker_id}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"Redis: {exc}") from exc

    async def claim(
        self,
        call_id: str,
        max_queue: int,
        exclude: Collection[str] = (),
        holder: Holder | None = None,
    ) -> Claim:
        """Atomically take a free slot, else a queue place, for ``call_id`` (on a worker
        not in ``exclude``), counted against ``holder``'s key and token."""
        holder = holder or Holder()
        args: list[str | int | float] = [
            self.prefix,
            call_id,
            max_queue,
            OWNER_TTL_S * 1000,
            holder.key,
            holder.max_calls,
            holder.token,
            max(1, int(holder.token_ttl_s * 1000)),
            *exclude,
        ]
        kind, worker_id, url, position, queued = await self._run(self._claim, args)
        return Claim(Placement(kind), call_id, worker_id, url, int(position), int(queued))

    async def holds(self, worker_id: str, call_id: str) -> bool:
        """Whether ``worker_id`` has a claim for ``call_id`` (a worker checks its offers)."""
        try:
            return bool(await self._redis.hexists(f"{self.prefix}:c:{worker_id}", call_id))
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"Redis: {exc}") from exc

    async def release(self, worker_id: str, call_id: str, refund_token: str = "") -> bool:
        """Free the call's slot or queue place (and give its token back, when
        ``refund_token`` names it: the call never started); False when it held none."""
        args: list[str | int | float] = [
            self.prefix,
            worker_id,
            call_id,
            ENDED_TTL_S * 1000,
            refund_token,
        ]
        return bool(await self._run(self._release, args))

    async def owner(self, call_id: str) -> str | None:
        """The id of the worker that owns ``call_id`` (it may since have died)."""
        try:
            found = await self._redis.get(f"{self.prefix}:call:{call_id}")
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"Redis: {exc}") from exc
        return str(found) if found is not None else None

    async def worker(self, worker_id: str) -> WorkerInfo | None:
        """A live worker's registration (None once it has expired)."""
        found = await self.workers([worker_id])
        return found[0] if found else None

    async def workers(self, ids: Collection[str] | None = None) -> list[WorkerInfo]:
        """Every live worker (or those of ``ids`` still alive)."""
        try:
            if ids is None:
                ids = sorted(str(i) for i in await self._redis.smembers(f"{self.prefix}:workers"))
            async with self._redis.pipeline(transaction=False) as pipe:
                for worker_id in ids:
                    pipe.hgetall(f"{self.prefix}:w:{worker_id}")
                    pipe.hlen(f"{self.prefix}:c:{worker_id}")
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"Redis: {exc}") from exc
        out = []
        for i, worker_id in enumerate(ids):
            info, used = answers[2 * i], answers[2 * i + 1]
            if info:
                out.append(_worker(worker_id, info, int(used)))
        return out

    async def _run(self, script: AsyncScript, args: list[str | int | float]) -> Any:
        try:
            return await script(args=args)
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"Redis: {exc}") from exc


def _worker(worker_id: str, info: Mapping[str, str], used: int) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        url=info.get("url", ""),
        engine=info.get("engine", ""),
        slots=int(info.get("slots", 0)),
        used=used,
        max_queue=int(info.get("max_queue", 0)),
        ready=info.get("ready") == "1",
        media=info.get("media", ""),
        call_s=float(info.get("call_s", 0.0)),
    )

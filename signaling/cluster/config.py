"""The ``[cluster]`` settings: which role this process plays and where Redis is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from omni.api import require


class Role(StrEnum):
    SINGLE = "single"
    """One process takes offers and serves media and engines; no Redis."""
    GATEWAY = "gateway"
    """Takes offers and routes each to a worker with a free replica (needs Redis)."""
    WORKER = "worker"
    """Serves media and engines for calls a gateway placed on it (needs Redis)."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    role: Role = Role.SINGLE
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the worker registry, slots and call owners (gateway and worker)."""
    key_prefix: str = "omnirtc"
    """Prefix of every Redis key (several clusters may share one Redis)."""
    worker_id: str = ""
    """This worker's name in the registry; empty = host name, port and process id."""
    advertise_url: str = ""
    """The worker's API as gateways reach it (http://10.0.0.5:8080); empty = from
    server.host and server.port (which must then not be 0.0.0.0)."""
    heartbeat_s: float = 1.0
    """How often a worker refreshes its registration."""
    worker_ttl_s: float = 5.0
    """A worker that has not refreshed its registration this long is dead: its slots are
    freed and no call is routed to it."""
    max_queue: int = 16
    """Calls that may wait for a replica across the cluster; more get 503 + Retry-After."""
    worker_timeout_s: float = 20.0
    """How long a gateway waits for a worker to answer an offer or a call request."""
    redis_timeout_s: float = 2.0
    """Longest one Redis command may take before it counts as failed."""
    processes: int = 1
    """Worker processes to start on this machine (one core each for media); process i
    listens on server.port + i and takes an equal share of webrtc.udp_ports."""

    def __post_init__(self) -> None:
        require(
            urlsplit(self.redis_url).scheme in ("redis", "rediss", "unix"),
            f"redis_url must be a redis://, rediss:// or unix:// URL, not {self.redis_url!r}",
        )
        require(
            bool(self.key_prefix) and ":" not in self.key_prefix and len(self.key_prefix) <= 64,
            "key_prefix must be 1..64 characters without ':'",
        )
        require(
            len(self.worker_id) <= 128 and all(c.isalnum() or c in "-_." for c in self.worker_id),
            "worker_id may hold letters, digits, '-', '_' and '.' (128 at most)",
        )
        if self.advertise_url:
            parts = urlsplit(self.advertise_url)
            require(
                parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in "/",
                f"advertise_url must be like http://10.0.0.5:8080, not {self.advertise_url!r}",
            )
        require(0.1 <= self.heartbeat_s <= 60, "heartbeat_s must be 0.1..60")
        require(
            2 * self.heartbeat_s <= self.worker_ttl_s <= 600,
            "worker_ttl_s must be at least twice heartbeat_s (and at most 600)",
        )
        require(0 <= self.max_queue <= 100_000, "max_queue must be 0..100000")
        require(0.5 <= self.worker_timeout_s <= 300, "worker_timeout_s must be 0.5..300")
        require(0.05 <= self.redis_timeout_s <= 60, "redis_timeout_s must be 0.05..60")
        require(1 <= self.processes <= 256, "processes must be 1..256")

"""Routing calls from a gateway to workers: place an offer, reach a call by its id.

Entry points (the JSON API today; WHIP and WebSocket later) hand the router what they
received; it claims a slot in the registry, forwards the offer to that worker's own API over
HTTP (the worker answers with its own media address in the SDP, so media then flows between
the client and the worker), and relays the answer.  A worker that cannot be reached is
passed over (its claim freed) for another; a call's later requests go to the worker that
owns it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from pydantic import ValidationError

from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import Claim, Placement, RedisRegistry, RegistryUnavailable
from signaling.cluster.worker import CALL_ID, CALL_ID_HEADER
from signaling.errors import ApiError, busy
from signaling.messages import CallRequest
from signaling.sessions import new_call_id

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Workers tried for one offer (each unreachable one is passed over)."""
RETRY_AFTER_BUSY_S = 5
_RELAYED_HEADERS = ("Content-Type", "Location", "Retry-After", "ETag", "Accept-Patch", "Link")
"""Headers of a worker's answer handed back to the client (WHIP's among them)."""
_FORWARDED_HEADERS = ("Content-Type", "If-Match", "Authorization")
"""Headers of a client's request about a call passed on to its worker."""
_PARSE_ON_LOOP_BYTES = 64 * 1024


class WorkerUnreachable(RuntimeError):
    def __init__(self, message: str, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered
        """Whether the request may have reached the worker (it timed out or broke off
        after it was sent) rather than never connecting."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """A worker's answer, to hand back to the client."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    worker_id: str = ""


class Router:
    def __init__(
        self,
        registry: RedisRegistry,
        settings: ClusterSettings,
        on_claim: Callable[[Claim, float], None] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._on_claim = on_claim
        """Told every claim and how long it took (metrics)."""
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=self.settings.worker_timeout_s),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------ offers

    async def place(
        self,
        raw: bytes,
        content_type: str,
        path: str = "/v1/calls",
        headers: Mapping[str, str] | None = None,
    ) -> Relayed:
        """Claim a slot (or a queue place) and have its worker answer the offer (``headers``:
        the client's; those that matter, such as Authorization, are passed on)."""
        call_id = new_call_id()
        passed_over: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            claim = await self._claim(call_id, passed_over)
            try:
                relayed = await self._send(
                    claim.worker_url,
                    "POST",
                    path,
                    body=raw,
                    content_type=content_type,
                    call_id=call_id,
                    headers=headers,
                )
            except WorkerUnreachable as exc:
                if exc.delivered:
                    # The worker may have admitted the call: its claim stays (the worker's
                    # heartbeat frees it if no call took it), and no other worker gets this id.
                    log.warning("worker %s did not answer: %s", claim.worker_id, exc)
                    raise ApiError(
                        504, "worker_timeout", "the worker did not answer the offer in time"
                    ) from None
                log.warning(
                    "worker %s unreachable, trying another: %s",
                    claim.worker_id,
                    exc,
                    extra={"call_id": call_id, "worker": claim.worker_id},
                )
                await self._release(claim)
                passed_over.append(claim.worker_id)
                continue
            if relayed.status != 201:
                await self._release(claim)  # the worker freed it too (idempotent)
                return relayed
            log.info(
                "call placed",
                extra={
                    "call_id": call_id,
                    "worker": claim.worker_id,
                    "placement": claim.placement.value,
                },
            )
            if claim.placement is Placement.QUEUED:
                relayed = await self._with_queue(relayed, claim)
            return relayed
        raise ApiError(
            502, "worker_unavailable", "no worker could be reached", {"Retry-After": "1"}
        )

    async def _claim(self, call_id: str, passed_over: list[str]) -> Claim:
        start = time.perf_counter()
        try:
            claim = await self.registry.claim(call_id, self.settings.max_queue, passed_over)
        except RegistryUnavailable:
            raise ApiError(
                503, "registry_unavailable", "the registry cannot be reached", {"Retry-After": "1"}
            ) from None
        if self._on_claim is not None:
            self._on_claim(claim, time.perf_counter() - start)
        if claim.placement is Placement.FULL:
            raise busy(
                f"every replica in the cluster is in a call and {claim.queued} calls wait",
                RETRY_AFTER_BUSY_S,
            )
        return claim

    async def _release(self, claim: Claim) -> None:
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self.registry.release(claim.worker_id, claim.call_id)
        except (RegistryUnavailable, TimeoutError) as exc:
            # The worker's heartbeat frees a claim no call took, after a grace.
            log.warning("could not free claim %s now: %s", claim.call_id, exc)

    async def _with_queue(self, relayed: Relayed, claim: Claim) -> Relayed:
        """The answer, with the call's place in the queue and an estimated wait."""
        try:
            body = json.loads(relayed.body)
            worker = await self.registry.worker(claim.worker_id)
        except (ValueError, RegistryUnavailable):
            return relayed
        call_s = worker.call_s if worker is not None else 0.0
        slots = max(1, worker.slots if worker is not None else 1)
        body["queue"] = {
            "position": claim.position,
            "estimated_wait_s": round(claim.position * call_s / slots, 1),
            "queue_length": claim.queued,
        }
        return Relayed(relayed.status, json.dumps(body).encode(), relayed.headers, claim.worker_id)

    # ------------------------------------------------------------ calls by id

    async def to_call(
        self,
        call_id: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Relayed:
        """Forward a request about ``call_id`` (its body and the headers that matter) to the
        worker that owns it."""
        if not CALL_ID.fullmatch(call_id):
            raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")
        try:
            owner = await self.registry.owner(call_id)
            worker = await self.registry.worker(owner) if owner is not None else None
        except RegistryUnavailable:
            raise ApiError(
                503, "registry_unavailable", "the registry cannot be reached", {"Retry-After": "1"}
            ) from None
        if owner is None:
            raise ApiError(404, "unknown_call", f"no call with id {call_id!r}")
        if worker is None:
            raise ApiError(
                410, "worker_gone", f"the worker that served call {call_id} is gone; it ended"
            )
        try:
            return await self._send(worker.url, method, path, body=body, headers=headers)
        except WorkerUnreachable:
            raise ApiError(
                502, "worker_unavailable", f"the worker of call {call_id} cannot be reached"
            ) from None

    # ------------------------------------------------------------ HTTP

    async def _send(
        self,
        base: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        call_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Relayed:
        if self._http is None:
            raise ApiError(503, "not_ready", "the gateway is starting")
        sent = {k: v for k, v in (headers or {}).items() if k in _FORWARDED_HEADERS}
        if content_type is not None:
            sent["Content-Type"] = content_type
        if call_id is not None:
            sent[CALL_ID_HEADER] = call_id
        try:
            async with self._http.request(method, base + path, data=body, headers=sent) as r:
                data = await r.read()
                kept = [(k, v) for k in _RELAYED_HEADERS for v in r.headers.getall(k, ())]
                return Relayed(r.status, data, kept)
        except aiohttp.ClientConnectorError as exc:
            raise WorkerUnreachable(f"{base}: {exc}", delivered=False) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WorkerUnreachable(
                f"{base}: {exc or type(exc).__name__}", delivered=True
            ) from None


def check_offer(raw: bytes) -> CallRequest:
    """The offer, validated before a slot is claimed for it (its voice clip, if any, is
    decoded by the worker)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    try:
        return CallRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid_request", f"{where}: {first['msg']}") from None


async def check_offer_off_loop(raw: bytes) -> CallRequest:
    if len(raw) > _PARSE_ON_LOOP_BYTES:
        return await asyncio.to_thread(check_offer, raw)
    return check_offer(raw)

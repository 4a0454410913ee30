"""Routing calls from a gateway to workers: place an offer, reach a call by its id.

Entry points (the JSON API, WHIP, the ``/v1/realtime`` WebSocket) hand the router what they
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
from aiohttp import web
from pydantic import ValidationError

from signaling.auth import ANONYMOUS, Principal
from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import (
    Claim,
    Holder,
    Placement,
    RedisRegistry,
    RegistryUnavailable,
    registry_unavailable,
)
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
    """Places calls and sessions on workers and relays requests about them."""

    def __init__(
        self,
        registry: RedisRegistry,
        settings: ClusterSettings,
        on_claim: Callable[[Claim, float], None] | None = None,
        token_ttl_s: float = 0.0,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._token_ttl_s = token_ttl_s
        """How long call tokens live (auth.token_ttl_s): a spent token is marked that long."""
        self._on_claim = on_claim
        """Told every claim and how long it took (metrics)."""
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientSession | None = None
        """WebSocket sessions to workers: no total timeout (they last as long as the
        client's); the handshake is bounded by worker_timeout_s."""

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=self.settings.worker_timeout_s),
        )
        self._ws = aiohttp.ClientSession(
            # One connection per live session (the gateway's max_connections bounds them).
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.worker_timeout_s),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------ offers

    async def place(
        self,
        raw: bytes,
        content_type: str,
        path: str = "/v1/calls",
        headers: Mapping[str, str] | None = None,
        principal: Principal = ANONYMOUS,
    ) -> Relayed:
        """Claim a slot (or a queue place) for ``principal`` and have its worker answer the
        offer (``headers``: the client's; those that matter, such as Authorization, are
        passed on)."""
        call_id = new_call_id()
        passed_over: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            claim = await self.claim(call_id, passed_over, principal)
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
                await self.release(claim, principal)
                passed_over.append(claim.worker_id)
                continue
            if relayed.status != 201:
                await self.release(claim, principal)  # the worker freed it too (idempotent)
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

    # ------------------------------------------------------------ WebSocket sessions

    async def open_websocket(
        self,
        path_qs: str,
        protocols: tuple[str, ...],
        *,
        headers: Mapping[str, str] | None = None,
        principal: Principal = ANONYMOUS,
        max_msg_size: int = 0,
        heartbeat_s: float | None = None,
    ) -> tuple[aiohttp.ClientWebSocketResponse, Claim]:
        """Claim a slot (or a queue place) for a WebSocket session and open it on that
        worker (``path_qs``: the client's path and query; ``headers``: the client's, of
        which Authorization is passed on).  The worker frees the slot when the session
        ends; the caller frees it (``release``) if the session never started."""
        if self._ws is None:
            raise ApiError(503, "not_ready", "the gateway is starting")
        call_id = new_call_id()
        passed_over: list[str] = []
        sent = {k: v for k, v in (headers or {}).items() if k == "Authorization"}
        sent[CALL_ID_HEADER] = call_id
        for _ in range(MAX_ATTEMPTS):
            claim = await self.claim(call_id, passed_over, principal)
            try:
                async with asyncio.timeout(self.settings.worker_timeout_s):
                    ws = await self._ws.ws_connect(
                        claim.worker_url + path_qs,
                        protocols=protocols,
                        headers=sent,
                        max_msg_size=max_msg_size,
                        heartbeat=heartbeat_s,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                await self.release(claim, principal)
                log.warning("worker %s refused a session: %s", claim.worker_id, exc.status)
                raise ApiError(
                    502, "worker_refused", f"the worker refused the session ({exc.status})"
                ) from None
            except aiohttp.ClientConnectorError as exc:
                log.warning("worker %s unreachable, trying another: %s", claim.worker_id, exc)
                await self.release(claim, principal)
                passed_over.append(claim.worker_id)
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # It may have taken the session: the claim stays for its heartbeat to judge.
                log.warning("worker %s did not answer: %s", claim.worker_id, exc)
                raise ApiError(
                    504, "worker_timeout", "the worker did not open the session in time"
                ) from None
            log.info(
                "session placed",
                extra={
                    "call_id": call_id,
                    "worker": claim.worker_id,
                    "placement": claim.placement.value,
                },
            )
            return ws, claim
        raise ApiError(
            502, "worker_unavailable", "no worker could be reached", {"Retry-After": "1"}
        )

    # ------------------------------------------------------------ claims

    async def claim(
        self, call_id: str, passed_over: list[str], principal: Principal = ANONYMOUS
    ) -> Claim:
        """A slot or queue place for ``call_id``, within ``principal``'s limits across the
        cluster (its key's ``max_calls``; a token starts one call).  Raises ApiError: 503
        ``busy`` when the cluster is full, 429 ``too_many_calls``, 403 ``token_used``."""
        start = time.perf_counter()
        holder = Holder(
            key=principal.key,
            max_calls=principal.max_calls,
            token=principal.token or "",
            token_ttl_s=self._token_ttl_s,
        )
        try:
            claim = await self.registry.claim(call_id, self.settings.max_queue, passed_over, holder)
        except RegistryUnavailable:
            raise registry_unavailable() from None
        if self._on_claim is not None:
            self._on_claim(claim, time.perf_counter() - start)
        if claim.placement is Placement.FULL:
            raise busy(
                f"every replica in the cluster is in a call and {claim.queued} calls wait",
                RETRY_AFTER_BUSY_S,
            )
        if claim.placement is Placement.TOKEN_USED:
            raise ApiError(403, "token_used", "this token has already started its call")
        if claim.placement is Placement.KEY_LIMIT:
            raise ApiError(
                429,
                "too_many_calls",
                f"key {principal.key!r} is at its limit of {principal.max_calls} calls",
                {"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
        return claim

    async def release(self, claim: Claim, principal: Principal = ANONYMOUS) -> None:
        """Free a claim whose call did not start (its token may start a call again)."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self.registry.release(
                    claim.worker_id, claim.call_id, refund_token=principal.token or ""
                )
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
            raise registry_unavailable() from None
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


ROUTER = web.AppKey("router", Router)
"""Where a gateway app keeps its Router."""

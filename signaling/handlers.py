"""HTTP handlers of the signaling API (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from pathlib import Path

import numpy as np
from aiohttp import web
from numpy.typing import NDArray
from pydantic import ValidationError

from realtime.audio import decode_voice
from realtime.errors import InvalidVoice
from signaling.app_keys import AUTH, CALLS, POOL, WEB_DIR
from signaling.auth import principal_of
from signaling.errors import ApiError
from signaling.hooks import CLAIMED_CALL_ID
from signaling.messages import CallAnswer, CallRequest
from signaling.sessions import Admitted


async def create_call(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the offer as application/json, not {request.content_type or 'nothing'}",
        )
    raw = await request.read()
    if len(raw) > _PARSE_ON_LOOP_BYTES or b'"voice"' in raw:
        # A voice clip: parsing and decoding it would hold the event loop up.
        offer, voice = await asyncio.to_thread(_parse, raw)
    else:
        offer, voice = _parse(raw)
    admitted = await start_call(request, offer, voice)
    answer = CallAnswer(call_id=admitted.call_id, sdp=admitted.answer_sdp)
    return web.json_response(
        answer.model_dump(),
        status=201,
        headers={"Location": f"/v1/calls/{admitted.call_id}"},
    )


_PARSE_ON_LOOP_BYTES = 64 * 1024


def _parse(raw: bytes) -> tuple[CallRequest, NDArray[np.float32] | None]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    try:
        offer = CallRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid_request", f"{where}: {first['msg']}") from None
    voice = _voice(offer.session.voice) if offer.session.voice is not None else None
    return offer, voice


def _voice(encoded: str) -> NDArray[np.float32]:
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise InvalidVoice("session.voice must be base64") from None
    return decode_voice(data)


async def start_call(
    request: web.Request, offer: CallRequest, voice: NDArray[np.float32] | None
) -> Admitted:
    """Admit a call for the request's principal (a token starts one call at most)."""
    principal = principal_of(request)
    auth = request.app[AUTH]
    auth.spend(principal)
    try:
        # issue 10: a cluster worker names the call as the gateway that placed it did
        return await request.app[CALLS].create(
            offer, voice, principal, request.get(CLAIMED_CALL_ID)
        )
    except BaseException:
        auth.refund(principal)  # the call did not start: the token may try again
        raise


async def get_call(request: web.Request) -> web.Response:
    calls = request.app[CALLS]
    return web.json_response(calls.snapshot(request.match_info["call_id"], principal_of(request)))


async def delete_call(request: web.Request) -> web.Response:
    """Hang up; with ``?recording=delete`` the call's recording goes with it."""
    calls = request.app[CALLS]
    await calls.end(request.match_info["call_id"], principal_of(request))
    if request.query.get("recording") == "delete":
        await calls.recordings.delete(request.match_info["call_id"])
    return web.Response(status=204)


async def create_token(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if not auth.enabled:
        raise ApiError(400, "auth_off", "auth is off (no auth.api_keys): calls need no token")
    token, ttl = auth.mint(principal_of(request))
    return web.json_response({"token": token, "expires_in_s": ttl}, status=201)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    calls = request.app[CALLS]
    body = {
        "ready": pool.ready,
        "engine": pool.info.name,
        "engine_description": pool.info.description,
        "replicas": pool.size,
        "replicas_free": pool.free,
        "queued": pool.queued,
        "max_queue": pool.max_queue,
        "calls": calls.active,
        "max_calls": calls.max_calls,
    }
    if pool.error:
        body["error"] = pool.error
    return web.json_response(body, status=200 if pool.ready else 503)


async def index(request: web.Request) -> web.FileResponse:
    page: Path = request.app[WEB_DIR] / "index.html"
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

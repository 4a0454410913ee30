"""WHIP (RFC 9725): calls from any WHIP client (GStreamer, OBS, libwebrtc, Pion, browsers).

* ``POST /v1/whip`` with the SDP offer as ``application/sdp`` → ``201 Created``, the answer
  as ``application/sdp``, ``Location`` (the call's WHIP resource), an ``ETag`` naming its ICE
  session, and the configured STUN/TURN servers as ``Link: <url>; rel="ice-server"``
  headers.  Per-call options go in the query: ``?mode=loopback``, ``?language=zh``,
  ``?instructions=...`` (the JSON API's ``session`` fields, without the voice clip).
* ``PATCH /v1/whip/{call_id}`` with ``application/trickle-ice-sdpfrag`` (and ``If-Match`` with
  the ETag) adds trickled candidates → ``204``.  ICE restarts (``If-Match: *``, new
  credentials) are refused with ``422``: aiortc cannot restart ICE.
* ``DELETE /v1/whip/{call_id}`` ends the call → ``200``.

The call itself is the same as one made through ``POST /v1/calls``: the same admission, queue,
engine and events (when the offer carries an ``events`` data channel).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from realtime.trickle import InvalidFragment, read_trickle
from signaling.app_keys import CALLS, SETTINGS
from signaling.auth import principal_of
from signaling.errors import ApiError
from signaling.handlers import start_call
from signaling.messages import MAX_SDP_CHARS, CallRequest, SessionOptions

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
_QUERY_OPTIONS = ("mode", "instructions", "language")


async def create(request: web.Request) -> web.Response:
    if request.content_type != SDP:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the offer as {SDP}, not {request.content_type or 'nothing'}",
        )
    offer = _text(await request.read(), "offer", MAX_SDP_CHARS)
    options = _options(request)
    try:
        call_request = CallRequest(sdp=offer, type="offer", session=options)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", _first(exc)) from None
    admitted = await start_call(request, call_request, None)
    call = request.app[CALLS].live(admitted.call_id, principal_of(request))
    headers = {
        "Location": f"/v1/whip/{admitted.call_id}",
        "ETag": _etag(call.peer.local_ufrag),
        "Accept-Patch": SDPFRAG,
        "Content-Type": SDP,
    }
    response = web.Response(status=201, text=admitted.answer_sdp, headers=headers)
    for link in _ice_server_links(request):
        response.headers.add("Link", link)
    return response


async def patch(request: web.Request) -> web.Response:
    call = request.app[CALLS].live(request.match_info["call_id"], principal_of(request))
    if request.content_type != SDPFRAG:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send trickle ICE as {SDPFRAG}, not {request.content_type or 'nothing'}",
        )
    match = request.headers.get("If-Match")
    if match is None:
        raise ApiError(428, "precondition_required", "send If-Match with the session's ETag")
    fragment = read_trickle(_text(await request.read(), "fragment", 16 * 1024))
    restart = fragment.ufrag is not None and fragment.ufrag != call.peer.remote_ufrag
    if match.strip() == "*" or restart:
        raise ApiError(422, "ice_restart_unsupported", "this server cannot restart ICE")
    if match.strip() != _etag(call.peer.local_ufrag):
        raise ApiError(412, "precondition_failed", "the ETag names another ICE session")
    try:
        await call.peer.add_trickle(fragment)
    except InvalidFragment as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    return web.Response(status=204)


async def delete(request: web.Request) -> web.Response:
    await request.app[CALLS].end(request.match_info["call_id"], principal_of(request))
    return web.Response(status=200)


def _text(raw: bytes, what: str, limit: int) -> str:
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"the {what} is larger than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_sdp", f"the {what} is not UTF-8 text") from None


def _options(request: web.Request) -> SessionOptions:
    unknown = sorted(set(request.query) - set(_QUERY_OPTIONS))
    if unknown:
        raise ApiError(
            400,
            "invalid_request",
            f"unknown query parameter {unknown[0]!r}; known: {', '.join(_QUERY_OPTIONS)}",
        )
    values: dict[str, Any] = {
        key: request.query[key] for key in _QUERY_OPTIONS if key in request.query
    }
    try:
        return SessionOptions.model_validate(values)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", _first(exc)) from None


def _first(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "query"
    return f"{where}: {first['msg']}"


def _etag(ufrag: str | None) -> str:
    return f'"{ufrag or "none"}"'


def _ice_server_links(request: web.Request) -> list[str]:
    links = []
    for server in request.app[SETTINGS].webrtc.ice_servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (
                    f'; username="{_quoted(server.username)}"'
                    f'; credential="{_quoted(server.credential)}"; credential-type="password"'
                )
            links.append(link)
    return links


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')

"""The HTTP API against bad input: clear 4xx JSON errors, never a 5xx."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support.caller import Caller, make_offer


async def _error(response: aiohttp.ClientResponse) -> dict[str, str]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[]", "application/json", 400, "invalid_request"),
        (b'{"type": "offer"}', "application/json", 400, "invalid_request"),
        (b'{"sdp": "v=0", "type": "answer"}', "application/json", 400, "invalid_request"),
        (b'{"sdp": "", "type": "offer"}', "application/json", 400, "invalid_request"),
        (b'{"sdp": "hello", "type": "offer"}', "application/json", 400, "invalid_sdp"),
        (
            b'{"sdp": "v=0\\r\\ns=-\\r\\n", "type": "offer"}',
            "application/json",
            400,
            "unsupported_codec",
        ),
        (b'{"sdp": "x", "type": "offer", "extra": 1}', "application/json", 400, "invalid_request"),
        (
            b'{"sdp": "x", "type": "offer", "session": {"mode": "karaoke"}}',
            "application/json",
            400,
            "invalid_request",
        ),
        (b"sdp=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"v=0", "application/sdp", 415, "unsupported_media_type"),
        (b"\xff\xfe\x00", "application/json", 400, "invalid_json"),
    ],
)
async def test_bad_offers_get_clear_errors(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    server = await start_server()
    async with http.post(
        f"{server.url}/v1/calls", data=body, headers={"Content-Type": content_type}
    ) as response:
        assert response.status == status
        assert (await _error(response))["code"] == code


async def test_unsupported_codec_is_named(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    sdp = await make_offer()
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio"):
            line = " ".join([*line.split(" ")[:3], "103"])
        elif line.startswith("a=rtpmap:"):
            continue
        lines.append(line)
        if line.startswith("m=audio"):
            lines.append("a=rtpmap:103 ISAC/16000")
    async with http.post(
        f"{server.url}/v1/calls", json={"sdp": "\r\n".join(lines), "type": "offer"}
    ) as r:
        assert r.status == 400
        error = await _error(r)
    assert error["code"] == "unsupported_codec"
    assert "isac" in error["message"]


async def test_garbage_that_looks_like_sdp_is_rejected(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    sdp = (await make_offer()).replace("a=ice-ufrag", "a=x-ufrag").replace("a=ice-pwd", "a=x-pwd")
    async with http.post(f"{server.url}/v1/calls", json={"sdp": sdp, "type": "offer"}) as r:
        assert r.status == 400
        assert (await _error(r))["code"] == "invalid_sdp"
    async with http.get(f"{server.url}/readyz") as r:
        assert (await r.json())["calls"] == 0


async def test_oversized_body_is_413(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__max_body_bytes=4096)
    async with http.post(
        f"{server.url}/v1/calls", data=b"x" * 10_000, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413
        error = await _error(r)
    assert error["code"] == "body_too_large"
    assert "4096" in error["message"]


async def test_unknown_call_ids_are_404(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{server.url}/v1/calls/call_nope") as r:
            assert r.status == 404
            assert (await _error(r))["code"] == "unknown_call"


async def test_unknown_route_and_method(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.get(f"{server.url}/v2/nothing") as r:
        assert r.status == 404
        assert (await _error(r))["code"] == "not_found"
    async with http.put(f"{server.url}/v1/calls") as r:
        assert r.status == 405
        assert (await _error(r))["code"] == "method_not_allowed"


async def test_health_ready_and_page(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.get(f"{server.url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{server.url}/readyz") as r:
        assert r.status == 200
        body = await r.json()
    assert body["ready"] is True
    assert body["engine"] == "echo"
    async with http.get(f"{server.url}/") as r:
        assert r.status == 200
        assert "omnirtc" in await r.text()
    async with http.get(f"{server.url}/static/omnirtc.js") as r:
        assert r.status == 200
        assert "export class OmniCall" in await r.text()
    async with http.get(f"{server.url}/static/../pyproject.toml") as r:
        assert r.status in (403, 404)


async def test_call_limit_answers_503_with_retry_after(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__max_calls=1)
    first = Caller(server.url)
    second = Caller(server.url)
    try:
        await first.call(http)
        sdp = await second.offer()
        async with http.post(f"{server.url}/v1/calls", json={"sdp": sdp, "type": "offer"}) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) > 0
            assert (await _error(r))["code"] == "busy"
    finally:
        await first.close()
        await second.close()

"""Requests the HTTP parser rejects get our JSON error, quote nothing the client sent, and
log one line (no traceback)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.integration.rawhttp import exchange, served

SECRET = b"s3cr3t-session-token"
BIG_COOKIE = b"Cookie: session=" + SECRET + b"x" * 9000 + b"\r\n"
MANY_HEADERS = b"".join(b"X-H%d: %s\r\n" % (i, SECRET) for i in range(200))


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + BIG_COOKIE + b"\r\n",
            431,
            "headers_too_large",
            id="big-cookie",
        ),
        pytest.param(
            b"GET /" + SECRET + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431,
            "headers_too_large",
            id="long-url",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + MANY_HEADERS + b"\r\n",
            431,
            "headers_too_large",
            id="too-many-headers",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad " + SECRET + b": 1\r\n\r\n",
            400,
            "bad_request",
            id="bad-header-name",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + SECRET + b"\x01\r\n\r\n",
            400,
            "bad_request",
            id="control-char-in-header",
        ),
        pytest.param(
            b"GET /" + SECRET + b" HTTP/7.3\r\nHost: x\r\n\r\n",
            400,
            "bad_request",
            id="bad-version",
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request", id="no-host"),
        pytest.param(
            b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + SECRET + b"\r\n",
            400,
            "bad_request",
            id="bad-chunk-size",
        ),
        pytest.param(
            b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello",
            400,
            "bad_request",
            id="two-content-lengths",
        ),
    ],
)
async def test_malformed_requests_get_a_json_error_and_one_log_line(
    caplog: pytest.LogCaptureFixture, raw: bytes, status: int, code: str
) -> None:
    async with served() as server:
        with caplog.at_level(logging.DEBUG):
            response, closed = await exchange(server.port, raw)
    assert response.status == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert SECRET not in response.body
    assert closed, "the connection is closed after a malformed request"
    records = [r for r in caplog.records if r.levelno >= logging.INFO and "request" in r.message]
    assert [(r.name, r.levelname) for r in records] == [("signaling.http_server", "WARNING")]
    assert SECRET.decode() not in records[0].getMessage()
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in caplog.records)


async def test_tls_on_the_http_port_is_answered_but_only_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client_hello = bytes.fromhex("160301") + b"\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40
    async with served() as server:
        with caplog.at_level(logging.DEBUG):
            response, _ = await exchange(server.port, client_hello)
    assert response.status == 400
    assert response.json()["error"]["message"] == "this port speaks plain HTTP, not HTTPS"
    assert all(r.levelno < logging.INFO for r in caplog.records if r.name.startswith("aiohttp"))
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_big_cookie_from_a_real_client(caplog: pytest.LogCaptureFixture) -> None:
    async with served() as server, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO):
            async with http.get(
                f"{server.url}/healthz", headers={"Cookie": "session=" + "c" * 10_000}
            ) as r:
                assert r.status == 431
                assert (await r.json())["error"]["code"] == "headers_too_large"
        # The server goes on serving.
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_header_limit_is_a_setting() -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + BIG_COOKIE + b"\r\n"
    async with served(server__max_header_bytes=16384) as server:
        response, _ = await exchange(server.port, raw)
    assert response.status == 200
    assert response.json() == {"status": "ok"}


async def test_a_body_whose_framing_breaks_midway_is_a_400(
    caplog: pytest.LogCaptureFixture,
) -> None:
    head = (
        b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    async with served() as server:
        with caplog.at_level(logging.INFO):
            response, closed = await exchange(server.port, head + b"2\r\n{}\r\nzz\r\n")
    assert response.status == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert closed
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in caplog.records)

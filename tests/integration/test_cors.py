"""CORS: pages on the origins in server.cors_origins may call the API and import the client
module; other origins get no CORS headers; preflights are answered for the API's routes."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import ServerFactory

APP = "https://app.example.com"
OTHER = "https://evil.example.net"


def _cors_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-")}


def _vary(response: aiohttp.ClientResponse) -> set[str]:
    return {v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()}


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        ("/v1/calls", "POST", "POST"),
        ("/v1/calls/call_unknown", "GET", "DELETE, GET, HEAD"),
        ("/v1/calls/call_unknown", "DELETE", "DELETE, GET, HEAD"),
    ],
)
async def test_preflight_from_an_allowed_origin(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    path: str,
    method: str,
    allowed: str,
) -> None:
    server = await start_server(server__cors_origins=[APP, "http://localhost:3000"])
    async with http.options(
        server.url + path,
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    ) as r:
        assert r.status == 204
        cors = _cors_headers(r)
        assert cors["access-control-allow-origin"] == APP
        assert cors["access-control-allow-methods"] == allowed
        allowed_headers = {
            h.strip().lower() for h in cors["access-control-allow-headers"].split(",")
        }
        assert allowed_headers == {"content-type", "authorization", "if-match"}
        assert "access-control-allow-credentials" not in cors
        assert int(cors["access-control-max-age"]) > 0
        assert "origin" in _vary(r)


async def test_preflight_refusals_carry_no_cors_headers(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__cors_origins=[APP])
    cases = [
        ({"Origin": OTHER, "Access-Control-Request-Method": "POST"}, "/v1/calls"),
        ({"Origin": APP, "Access-Control-Request-Method": "PUT"}, "/v1/calls"),
        (
            {
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-secret",
            },
            "/v1/calls",
        ),
    ]
    for headers, path in cases:
        async with http.options(server.url + path, headers=headers) as r:
            assert r.status == 403, headers
            assert _cors_headers(r) == {}, headers
            body = await r.json()
            assert body["error"]["code"] == "cors_rejected"
            assert OTHER not in body["error"]["message"]
            assert "origin" in _vary(r)


async def test_without_cors_origins_no_origin_is_allowed(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.options(
        server.url + "/v1/calls",
        headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
    ) as r:
        assert r.status == 403
        assert _cors_headers(r) == {}
    async with http.get(server.url + "/v1/calls/call_x", headers={"Origin": APP}) as r:
        assert r.status == 404
        assert _cors_headers(r) == {}
        assert "origin" in _vary(r)


async def test_responses_to_an_allowed_origin_carry_cors_headers(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__cors_origins=[APP])
    # An error answer (which the page must be able to read) ...
    async with http.post(server.url + "/v1/calls", json={}, headers={"Origin": APP}) as r:
        assert r.status == 400
        cors = _cors_headers(r)
        assert cors["access-control-allow-origin"] == APP
        exposed = {h.strip().lower() for h in cors["access-control-expose-headers"].split(",")}
        assert {"location", "retry-after"} <= exposed
        assert "origin" in _vary(r)
    # ... the client module, which a page imports as an ES module (a CORS request) ...
    async with http.get(server.url + "/static/omnirtc.js", headers={"Origin": APP}) as r:
        assert r.status == 200
        assert "export class OmniCall" in await r.text()
        assert _cors_headers(r)["access-control-allow-origin"] == APP
        assert "origin" in _vary(r)
    # ... and not to another origin, nor without an Origin.
    for headers in ({"Origin": OTHER}, {}):
        async with http.get(server.url + "/static/omnirtc.js", headers=headers) as r:
            assert r.status == 200
            assert _cors_headers(r) == {}
            assert "origin" in _vary(r)
    # The page and the health checks are not part of the cross-origin surface.
    async with http.get(server.url + "/healthz", headers={"Origin": APP}) as r:
        assert _cors_headers(r) == {}


async def test_a_wildcard_allows_every_origin(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__cors_origins=["*"])
    async with http.options(
        server.url + "/v1/calls",
        headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(server.url + "/v1/calls/call_x", headers={"Origin": OTHER}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers


async def test_origins_match_case_insensitively(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__cors_origins=["https://App.Example.com"])
    async with http.get(server.url + "/v1/calls/call_x", headers={"Origin": APP}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == APP


async def test_options_without_a_preflight_is_still_405(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(server__cors_origins=[APP])
    async with http.options(server.url + "/v1/calls") as r:
        assert r.status == 405
        assert (await r.json())["error"]["code"] == "method_not_allowed"

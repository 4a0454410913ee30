"""Access control with real calls: API keys, per-key limits, call tokens, and a call reachable
only by its owner, on every entry point (JSON API, WHIP, the /v1/realtime WebSocket)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from openbmb_realtime import RealtimeClient, RealtimeError

from signaling.auth import Authenticator, Principal
from signaling.errors import ApiError
from signaling.settings import ApiKey, AuthSettings
from tests.conftest import ServerFactory
from tests.support.caller import Caller

KEY_A = "kiosk-a-secret-0123456789"
KEY_B = "robot-b-secret-0123456789"
KEYS = [
    {"name": "kiosk-a", "key": KEY_A, "max_calls": 2},
    {"name": "robot-b", "key": KEY_B},
]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _status(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body: dict[str, Any] = await response.json()
    return response.status, body["error"]["code"] if "error" in body else ""


async def test_without_credentials_every_api_entry_point_is_401_and_the_page_stays_public(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth__api_keys=KEYS)
    url = server.url
    for method, path in [
        ("POST", "/v1/calls"),
        ("GET", "/v1/calls/call_x"),
        ("DELETE", "/v1/calls/call_x"),
        ("POST", "/v1/whip"),
        ("PATCH", "/v1/whip/call_x"),
        ("POST", "/v1/tokens"),
    ]:
        for headers in ({}, bearer("wrong-key-0123456789"), {"Authorization": "Basic eDp5"}):
            async with http.request(method, url + path, headers=headers) as r:
                assert await _status(r) == (401, "unauthorized"), (method, path, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/", "/healthz", "/readyz", "/static/omnirtc.js"):
        async with http.get(url + path) as r:
            assert r.status == 200, path


async def test_a_call_belongs_to_its_key_and_keys_have_call_limits(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth__api_keys=KEYS)
    first, second, third = Caller(server.url), Caller(server.url), Caller(server.url)
    try:
        body = await first.call(http, headers=bearer(KEY_A))
        call_id = body["call_id"]
        assert re.fullmatch(r"call_[0-9a-f]{32}", call_id), "128 random bits"
        calls = f"{server.url}/v1/calls/{call_id}"
        async with http.get(calls, headers=bearer(KEY_A)) as r:
            assert r.status == 200
        for method in ("GET", "DELETE"):
            async with http.request(method, calls, headers=bearer(KEY_B)) as r:
                assert await _status(r) == (404, "unknown_call"), "not B's call to see or end"
        await second.call(http, headers=bearer(KEY_A))
        with pytest.raises(AssertionError, match="too_many_calls"):
            await third.call(http, headers=bearer(KEY_A))
        async with http.post(
            f"{server.url}/v1/calls",
            json={"sdp": "v=0", "type": "offer"},
            headers=bearer(KEY_A),
        ) as r:
            assert await _status(r) == (429, "too_many_calls")
            assert r.headers["Retry-After"]
        async with http.delete(calls, headers=bearer(KEY_A)) as r:
            assert r.status == 204
        async with http.get(calls, headers=bearer(KEY_A)) as r:
            assert (await r.json())["end_reason"] == "deleted"
        async with http.get(calls, headers=bearer(KEY_B)) as r:
            assert r.status == 404, "an ended call stays private too"
    finally:
        for caller in (first, second, third):
            await caller.close()


async def test_a_token_starts_one_call_and_reaches_only_that_call(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth__api_keys=KEYS)
    async with http.post(f"{server.url}/v1/tokens", headers=bearer(KEY_A)) as r:
        assert r.status == 201
        minted = await r.json()
    token = minted["token"]
    assert minted["expires_in_s"] == 120
    by_token, by_key, refused = Caller(server.url), Caller(server.url), Caller(server.url)
    try:
        own = (await by_token.call(http, headers=bearer(token)))["call_id"]
        other = (await by_key.call(http, headers=bearer(KEY_A)))["call_id"]
        with pytest.raises(AssertionError, match="token_used"):
            await refused.call(http, headers=bearer(token))
        async with http.get(f"{server.url}/v1/calls/{own}", headers=bearer(token)) as r:
            assert r.status == 200
        async with http.get(f"{server.url}/v1/calls/{other}", headers=bearer(token)) as r:
            assert r.status == 404, "a token reaches only the call it started"
        async with http.get(f"{server.url}/v1/calls/{own}", headers=bearer(KEY_A)) as r:
            assert r.status == 200, "the key that minted the token owns its call"
        async with http.get(f"{server.url}/v1/calls/{own}", headers=bearer(KEY_B)) as r:
            assert r.status == 404
        async with http.post(f"{server.url}/v1/tokens", headers=bearer(token)) as r:
            assert await _status(r) == (403, "forbidden")
        tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        async with http.get(f"{server.url}/v1/calls/{own}", headers=bearer(tampered)) as r:
            assert r.status == 401
    finally:
        for caller in (by_token, by_key, refused):
            await caller.close()


async def test_whip_takes_the_same_credentials(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth__api_keys=KEYS)
    caller = Caller(server.url)
    try:
        offer = await caller.offer()
        sdp = {"Content-Type": "application/sdp"}
        async with http.post(f"{server.url}/v1/whip", data=offer, headers=sdp) as r:
            assert r.status == 401
        async with http.post(
            f"{server.url}/v1/whip", data=offer, headers={**sdp, **bearer(KEY_B)}
        ) as r:
            assert r.status == 201
            resource = server.url + r.headers["Location"]
        async with http.delete(resource, headers=bearer(KEY_A)) as r:
            assert r.status == 404, "A cannot hang up B's WHIP call"
        async with http.delete(resource, headers=bearer(KEY_B)) as r:
            assert r.status == 200
    finally:
        await caller.close()


async def test_websocket_sessions_count_against_their_keys_limit_and_a_token_opens_one(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth__api_keys=KEYS)

    def client(secret: str) -> RealtimeClient:
        return RealtimeClient(api_key=secret, base_url=server.url, close_timeout=5.0)

    with pytest.raises(RealtimeError):
        await client("wrong-key-0123456789").audio.connect(model="m")
    first = await client(KEY_A).audio.connect(model="m")
    caller = Caller(server.url)
    try:
        await caller.call(http, headers=bearer(KEY_A))
        with pytest.raises(RealtimeError) as refused:
            await client(KEY_A).audio.connect(model="m")
        assert refused.value.code == "too_many_calls", "a session and a call fill A's two"
        with pytest.raises(AssertionError, match="too_many_calls"):
            await Caller(server.url).call(http, headers=bearer(KEY_A))
        async with http.post(f"{server.url}/v1/tokens", headers=bearer(KEY_A)) as r:
            token = (await r.json())["token"]
        with pytest.raises(RealtimeError) as refused:
            await client(token).audio.connect(model="m")
        assert refused.value.code == "too_many_calls"
        await first.close()
        by_token = await client(token).audio.connect(model="m")
        await by_token.close()  # the refusal above did not spend the token; this did
        async with http.ws_connect(f"{server.url.replace('http', 'ws')}/v1/realtime",
                                   headers=bearer(token)) as ws:  # fmt: skip
            reply = await ws.receive_json(timeout=5)
        assert reply["error"]["code"] == "token_used", reply
        second = await client(KEY_B).audio.connect(model="m")
        await second.close()
    finally:
        await caller.close()


async def test_tokens_need_auth_on(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.post(f"{server.url}/v1/tokens") as r:
        assert await _status(r) == (400, "auth_off")


def test_an_expired_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import signaling.auth as auth_module

    auth = Authenticator(AuthSettings(api_keys=(ApiKey("a", KEY_A),), token_ttl_s=5))
    token, _ = auth.mint(Principal("a", 0))
    now = auth_module.time.time()

    class Request:
        headers = bearer(token)

    principal = auth.identify(Request())  # type: ignore[arg-type]
    assert principal.key == "a" and principal.token
    monkeypatch.setattr(auth_module.time, "time", lambda: now + 6)
    with pytest.raises(ApiError, match="expired"):
        auth.identify(Request())  # type: ignore[arg-type]


def test_tokens_from_another_secret_are_refused() -> None:
    keys = (ApiKey("a", KEY_A),)
    one = Authenticator(AuthSettings(api_keys=keys, token_secret="one-secret"))
    two = Authenticator(AuthSettings(api_keys=keys, token_secret="two-secret"))
    token, _ = one.mint(Principal("a", 0))

    class Request:
        headers = bearer(token)

    with pytest.raises(ApiError, match="not valid"):
        two.identify(Request())  # type: ignore[arg-type]
    shared = Authenticator(AuthSettings(api_keys=keys, token_secret="one-secret"))
    assert shared.identify(Request()).key == "a"  # type: ignore[arg-type]

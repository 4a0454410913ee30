"""A page on another origin imports the client module from the server and makes a real call
from headless Chromium (CORS); with its origin not allowed, the browser blocks it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page

from tests.browser.chromium import chromium
from tests.conftest import ServerFactory
from tests.support.media import silence, speechlike, write_wav

pytestmark = pytest.mark.browser

# The page of "another site": it imports the client module from the omnirtc server, calls
# it with a fake microphone, and then probes the API with a plain cross-origin fetch.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>another site</title>
<script type="module">
const api = "%(api)s";
const result = (window.result = {
  imported: false, callId: null, events: [], states: [], errors: [],
  snapshot: null, probe: null, done: false,
});
try {
  const { OmniCall } = await import(api + "/static/omnirtc.js");
  result.imported = true;
  const call = new OmniCall({ baseUrl: api });
  window.call = call;
  call.addEventListener("message", (e) => result.events.push(e.detail.type));
  call.addEventListener("state", (e) => result.states.push(e.detail.state));
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  result.callId = await call.start(stream);
  const r = await fetch(api + "/v1/calls/" + result.callId);
  result.snapshot = { status: r.status, body: await r.json() };
} catch (e) {
  result.errors.push(String((e && e.message) || e));
}
try {
  const r = await fetch(api + "/v1/calls", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
  });
  result.probe = { status: r.status, body: await r.json() };
} catch (e) {
  result.probe = { blocked: String(e) };
}
result.done = true;
</script>
"""


class AnotherSite:
    """A second web server, on another port of 127.0.0.1 (so another origin), serving the
    page that calls ``api`` (set once the omnirtc server, which must know this site's
    origin, is up)."""

    def __init__(self) -> None:
        self.api = ""
        self.origin = ""

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"api": self.api}, content_type="text/html")


@asynccontextmanager
async def another_site() -> AsyncIterator[AnotherSite]:
    site = AnotherSite()
    app = web.Application()
    app.router.add_get("/", site.page)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    site.origin = str(server.make_url("")).rstrip("/")
    try:
        yield site
    finally:
        await server.close()


async def _result(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.result))"))


async def _wait(page: Page, check: str, timeout_s: float, console: list[str]) -> None:
    try:
        await page.wait_for_function(check, timeout=timeout_s * 1000, polling=100)
    except Exception:
        raise AssertionError(
            f"waiting for {check}: page state {await _result(page)}; console {console}"
        ) from None


def _mic(tmp_path: Path) -> Path:
    wav = tmp_path / "mic.wav"
    utterance = speechlike(1.5, rate=48_000, seed=5)
    write_wav(wav, np.concatenate([silence(1.0), utterance, silence(8.0)]), 48_000)
    return wav


async def _run_page(browser: Browser, origin: str) -> tuple[Page, list[str], dict[str, Any]]:
    """Open the other site's page and wait until its script has tried to call."""
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    await page.goto(origin + "/")
    await _wait(page, "() => window.result && window.result.done", 15, console)
    return page, console, await _result(page)


def _has(event: str) -> str:
    return f"() => window.result && window.result.events.includes('{event}')"


async def test_a_page_on_an_allowed_origin_calls_with_the_imported_client(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with another_site() as site:
        server = await start_server(server__cors_origins=[site.origin])
        site.api = server.url
        assert site.origin != server.url
        async with chromium(_mic(tmp_path)) as browser:
            page, console, result = await _run_page(browser, site.origin)
            assert result["imported"], result
            assert not result["errors"], (result, console)
            call_id = result["callId"]
            assert call_id
            # The page could read a cross-origin GET, and an error body of a POST.
            assert result["snapshot"]["status"] == 200
            assert result["snapshot"]["body"]["call_id"] == call_id
            assert result["probe"]["status"] == 400
            assert result["probe"]["body"]["error"]["code"] == "invalid_request"
            await _wait(page, "() => window.result.states.includes('connected')", 10, console)
            for event in ("session.created", "unit", "input.speech_started"):
                await _wait(page, _has(event), 10, console)
            await _wait(page, _has("response.output_text.delta"), 12, console)
            async with http.get(f"{server.url}/v1/calls/{call_id}") as r:
                snapshot = await r.json()
            assert snapshot["state"] == "active"
            assert snapshot["counters"]["audio_in_ms"] > 2000
            # Hanging up sends a DELETE, which needs a preflight of its own.
            await page.evaluate("() => window.call.hangup()")
            for _ in range(50):
                async with http.get(f"{server.url}/v1/calls/{call_id}") as r:
                    if (await r.json())["state"] == "ended":
                        break
                await asyncio.sleep(0.1)
            assert (await r.json())["end_reason"] == "deleted"


async def test_a_page_on_another_origin_is_blocked(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with another_site() as site:
        server = await start_server(server__cors_origins=["https://app.example.com"])
        site.api = server.url
        async with chromium(_mic(tmp_path)) as browser:
            _, console, result = await _run_page(browser, site.origin)
    assert not result["imported"]
    assert result["callId"] is None
    assert result["errors"], result
    assert "blocked" in result["probe"], result
    blocked = [m for m in console if "CORS policy" in m]
    assert any("omnirtc.js" in m for m in blocked), console
    assert any("/v1/calls" in m for m in blocked), console
    async with http.get(f"{server.url}/readyz") as r:
        assert (await r.json())["calls"] == 0

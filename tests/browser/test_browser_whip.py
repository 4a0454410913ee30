"""A real third-party WHIP client (the ``whip-whep`` npm package, medooze's WHIPClient) in
headless Chromium calls the server: offer without candidates, candidates trickled by PATCH,
media both ways, hang-up by DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import Page

from tests.browser.chromium import chromium
from tests.browser.sites import other_site
from tests.conftest import ServerFactory
from tests.support.caller import call_snapshot
from tests.support.media import silence, speechlike, write_wav

pytestmark = pytest.mark.browser

WHIP_JS = Path(__file__).resolve().parents[2] / "node_modules" / "whip-whep" / "whip.js"

# Publishes the fake microphone with WHIPClient (sendrecv, so the loopback audio comes back),
# then reports what the connection received.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>whip client</title>
<script type="module">
import { WHIPClient } from "/whip.js";
const result = (window.result = { state: "new", errors: [], resource: null, etag: null });
try {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  // (WHIPClient sets pc.onconnectionstatechange itself: listen alongside it.)
  pc.addEventListener("connectionstatechange", () => { result.state = pc.connectionState; });
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendrecv" });
  pc.addEventListener("track", (e) => {
    // Played out, so that Chromium measures what arrives (totalAudioEnergy).
    const audio = new Audio();
    audio.srcObject = new MediaStream([e.track]);
    audio.play();
  });
  const client = new WHIPClient();
  window.client = client;
  await client.publish(pc, "%(api)s/v1/whip?mode=loopback");
  result.resource = String(client.resourceURL);
  result.etag = client.etag;
} catch (e) {
  result.errors.push(String((e && e.message) || e));
}
window.received = async () => {
  const stats = await window.pc.getStats();
  for (const r of stats.values()) {
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      return { packets: r.packetsReceived, energy: r.totalAudioEnergy || 0 };
    }
  }
  return { packets: 0, energy: 0 };
};
</script>
"""


@asynccontextmanager
async def whip_page_site(api: str) -> AsyncIterator[str]:
    """Serves the page and the package's whip.js (another origin than the API: CORS)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"api": api}, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        return web.Response(
            body=WHIP_JS.read_bytes(), content_type="text/javascript", charset="utf-8"
        )

    async with other_site({"/": page, "/whip.js": script}) as origin:
        yield origin


async def _result(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.result))"))


async def test_the_whip_whep_client_calls_trickles_and_hangs_up(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    assert WHIP_JS.is_file(), f"{WHIP_JS} is missing: `make test` runs npm ci"
    wav = tmp_path / "mic.wav"
    speech = np.concatenate([silence(0.5), speechlike(6.0, rate=48_000, seed=9), silence(4.0)])
    write_wav(wav, speech, 48_000)
    server = await start_server(server__cors_origins=["*"])
    async with whip_page_site(server.url) as origin, chromium(wav) as browser:
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        await page.goto(origin + "/")
        try:
            await page.wait_for_function(
                "() => window.result && (window.result.state === 'connected'"
                " || window.result.errors.length)",
                timeout=15_000,
                polling=100,
            )
        except Exception:
            states = await page.evaluate("() => [pc.connectionState, pc.iceConnectionState]")
            raise AssertionError(
                f"page {await _result(page)}; pc {states}; console {console}"
            ) from None
        result = await _result(page)
        assert not result["errors"], (result, console)
        assert result["resource"].startswith(server.url + "/v1/whip/call_"), result
        call_id = result["resource"].rsplit("/", 1)[1]
        await page.wait_for_timeout(3000)
        received = await page.evaluate("() => window.received()")
        assert received["packets"] > 50 and received["energy"] > 0.01, received
        snap = await call_snapshot(http, server.url, call_id)
        assert snap["state"] == "active" and snap["mode"] == "loopback"
        assert snap["counters"]["ice_candidates_trickled"] >= 1, "the client trickled"
        await page.evaluate("() => window.client.stop()")
        for _ in range(50):
            if (await call_snapshot(http, server.url, call_id))["state"] == "ended":
                break
            await page.wait_for_timeout(100)
        snap = await call_snapshot(http, server.url, call_id)
        assert snap["end_reason"] == "deleted", snap

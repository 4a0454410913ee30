"""examples/embed.html, served from another site, calls the server with a call token (CORS
and auth on): the example users copy is a working page."""

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
from tests.support.media import silence, speechlike, write_wav

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed.html"
KEY = "embed-key-0123456789abcdef"


@asynccontextmanager
async def example_site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(EXAMPLE)

    async with other_site({"/embed.html": page}) as origin:
        yield origin


async def _state(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.embed || {}))"))


async def test_the_embedding_example_calls_from_another_origin_with_a_token(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    wav = tmp_path / "mic.wav"
    write_wav(wav, np.concatenate([silence(0.5), speechlike(1.5, rate=48_000), silence(8)]), 48_000)
    async with example_site() as origin:
        server = await start_server(
            server__cors_origins=[origin], auth__api_keys=[{"name": "site", "key": KEY}]
        )
        async with http.post(
            f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            token = (await r.json())["token"]
        async with chromium(wav) as browser:
            page = await browser.new_page()
            await page.goto(f"{origin}/embed.html?server={server.url}#token={token}")
            await page.click("#call")
            try:
                await page.wait_for_function(
                    "() => window.embed && window.embed.events.includes("
                    "'response.output_text.delta')",
                    timeout=20_000,
                    polling=100,
                )
            except Exception:
                raise AssertionError(f"page: {await _state(page)}") from None
            state = await _state(page)
            assert not state["errors"] and state["callId"].startswith("call_")
            assert "[echo" in await page.inner_text("#log")
            await page.click("#hangup")
            await page.wait_for_timeout(500)
        async with http.get(
            f"{server.url}/v1/calls/{state['callId']}",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            assert (await r.json())["end_reason"] == "deleted"

"""With auth on, the real page calls with the key (or a call token) given in its URL fragment,
and without one it shows why it cannot call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Page

from tests.browser.chromium import chromium
from tests.conftest import ServerFactory
from tests.support.media import silence, speechlike, write_wav

pytestmark = pytest.mark.browser

KEY = "page-key-0123456789abcdef"


async def _observed(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.omnirtcPage))"))


async def test_the_page_calls_with_a_token_from_its_fragment_and_not_without(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(auth__api_keys=[{"name": "page", "key": KEY}])
    async with http.post(
        f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        token = (await r.json())["token"]
    wav = tmp_path / "mic.wav"
    write_wav(wav, np.concatenate([silence(0.5), speechlike(1.0, rate=48_000), silence(6)]), 48_000)
    async with chromium(wav) as browser:
        refused = await browser.new_page()
        await refused.goto(server.url + "/")
        await refused.click("#call")
        await refused.wait_for_function(
            "() => window.omnirtcPage.errors.length > 0", timeout=10_000, polling=100
        )
        assert any("Bearer" in e for e in (await _observed(refused))["errors"])
        page = await browser.new_page()
        await page.goto(f"{server.url}/#token={token}")
        await page.click("#call")
        try:
            await page.wait_for_function(
                "() => window.omnirtcPage.events.some(e => e.type === 'unit')",
                timeout=15_000,
                polling=100,
            )
        except Exception:
            raise AssertionError(f"page state: {await _observed(page)}") from None
        observed = await _observed(page)
        assert not observed["errors"], observed["errors"]
        call_id = observed["callId"]
        async with http.get(
            f"{server.url}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            assert (await r.json())["state"] == "active"
        await page.click("#hangup")
        await page.wait_for_timeout(500)
        async with http.get(
            f"{server.url}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            snapshot = await r.json()
        assert snapshot["state"] == "ended" and snapshot["end_reason"] == "deleted", snapshot

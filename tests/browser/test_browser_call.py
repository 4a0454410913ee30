"""A real call from the real page in headless Chromium, with a fake microphone and camera."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Page

from tests.browser.chromium import chromium
from tests.conftest import ServerFactory
from tests.support.media import silence, speechlike, write_wav, write_y4m

pytestmark = pytest.mark.browser


async def _observed(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.omnirtcPage))"))


async def _wait(page: Page, check: str, timeout_s: float) -> None:
    await page.wait_for_function(check, timeout=timeout_s * 1000, polling=100)


async def test_browser_call_with_echo_engine(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(call__video_frames_per_unit=1)
    wav = tmp_path / "mic.wav"
    utterance = speechlike(2.0, rate=48_000, seed=11)
    write_wav(wav, np.concatenate([silence(1.5), utterance, silence(8.0)]), 48_000)
    y4m = tmp_path / "camera.y4m"
    write_y4m(y4m, seconds=3.0)
    async with chromium(wav, y4m) as browser:
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        await page.goto(server.url + "/")
        await page.select_option("#camera", "default")
        await page.click("#call")
        try:
            await _wait(page, "() => window.omnirtcPage.callId", 10)
            await _wait(
                page,
                "() => window.omnirtcPage.events.some("
                "e => e.type === 'response.output_text.delta')",
                12,
            )
            await _wait(page, "() => window.omnirtcPage.audio.loudMs >= 1000", 8)
        except Exception:
            raise AssertionError(
                f"page state: {await _observed(page)}; console: {console}"
            ) from None
        observed = await _observed(page)
        types = [e["type"] for e in observed["events"]]
        assert types[0] == "session.created"
        assert "input.speech_started" in types
        assert "input.speech_stopped" in types
        echo = next(e for e in observed["events"] if e["type"] == "response.output_text.delta")
        seconds = float(echo["delta"].split()[1])
        assert 1.7 <= seconds <= 2.8, echo
        assert observed["audio"]["peakRms"] > 0.02
        assert not observed["errors"]
        assert await page.locator("#transcript li.service").count() >= 1
        assert "[echo" in (await page.locator("#transcript").inner_text())
        async with http.get(f"{server.url}/v1/calls/{observed['callId']}") as r:
            snapshot = await r.json()
        counters = snapshot["counters"]
        assert counters["speech_segments"] >= 1
        assert counters["audio_in_ms"] > 3000
        assert counters["video_frames_in"] > 10
        assert counters["speech_out_ms"] > 1000
        await page.click("#hangup")
        await asyncio.sleep(0.5)
        async with http.get(f"{server.url}/v1/calls/{observed['callId']}") as r:
            assert (await r.json())["state"] == "ended"


async def test_browser_shows_server_busy(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(server__max_calls=1)
    wav = tmp_path / "mic.wav"
    write_wav(wav, silence(5.0), 48_000)
    async with chromium(wav) as browser:
        first = await browser.new_page()
        await first.goto(server.url + "/")
        await first.click("#call")
        await _wait(first, "() => window.omnirtcPage.callId", 10)
        second = await browser.new_page()
        await second.goto(server.url + "/")
        await second.click("#call")
        await _wait(second, "() => window.omnirtcPage.errors.length > 0", 10)
        message = await second.locator("#error").inner_text()
        assert "busy" in message
        assert await second.locator("#call").is_enabled()

"""A spoken question from the real page in headless Chromium, answered by the lite engine."""

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
from tests.lite.models import Speaker
from tests.support.media import silence, write_wav

pytestmark = pytest.mark.browser


async def _observed(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => JSON.parse(JSON.stringify(window.omnirtcPage))"))


async def test_browser_call_with_lite_engine(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path, speaker: Speaker
) -> None:
    server = await start_server(engine__name="lite", engine__replicas=1)
    # Speaking it takes Piper a while: off the loop, where the warming server lives.
    question = await asyncio.to_thread(speaker.say, "What is the capital of France?", 48_000)
    wav = tmp_path / "question.wav"
    write_wav(wav, np.concatenate([silence(1.5), question, silence(12.0)]), 48_000)
    async with chromium(wav) as browser:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        assert "lite" in await page.locator("#engine").inner_text()
        await page.click("#call")
        try:
            await page.wait_for_function(
                "() => window.omnirtcPage.events.some("
                "e => e.type === 'response.output_text.delta')",
                timeout=15_000,
            )
            await page.wait_for_function(
                "() => window.omnirtcPage.audio.loudMs >= 400", timeout=10_000
            )
        except Exception:
            raise AssertionError(f"page state: {await _observed(page)}") from None
        observed = await _observed(page)
        text = "".join(
            e["delta"] for e in observed["events"] if e["type"] == "response.output_text.delta"
        )
        assert text.strip(), "no reply text"
        heard = " ".join(e["text"] for e in observed["events"] if e["type"] == "input.transcript")
        # Through the browser (its noise suppression, Opus) recognition is good, not perfect:
        # the engine-level tests check it exactly.
        question = {"what", "is", "the", "capital", "of", "france"}
        assert len(question & set(heard.lower().split())) >= 3, heard
        assert "input.speech_stopped" in [e["type"] for e in observed["events"]]
        assert any(e["type"] == "unit" and e["state"] == "speak" for e in observed["events"])
        shown = (await page.locator("#transcript").inner_text()).lower()
        assert text.strip().lower()[:20] in shown
        assert heard.lower() in shown
        async with http.get(f"{server.url}/v1/calls/{observed['callId']}") as r:
            counters = (await r.json())["counters"]
        # A reply of a few words ("The capital of France is Paris.") is about a second;
        # what came back is measured on the page after the browser's own processing.
        assert counters["speech_out_ms"] > 400
        await page.click("#hangup")

"""Headless Debian Chromium with a fake microphone and camera, driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"


def chromium_args(wav: Path, y4m: Path | None) -> list[str]:
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if y4m is not None:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    return args


@asynccontextmanager
async def chromium(wav: Path, y4m: Path | None = None) -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(
            f"{CHROMIUM} is missing: `make test` installs the Debian chromium package"
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(wav, y4m)
        )
        try:
            yield browser
        finally:
            await browser.close()

"""HTTPS for LAN kiosks: `omnirtc serve` with a self-signed certificate or the operator's own,
and a real call from the page in headless Chromium over HTTPS (a secure context)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from signaling.tls import self_signed
from tests.browser.chromium import chromium
from tests.support.media import silence, speechlike, write_wav

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
OMNIRTC = Path(sys.executable).parent / "omnirtc"


@contextmanager
def serving(*flags: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    # (Used from sync code only: starting and stopping the process blocks.)
    """`omnirtc serve` with the echo engine on a free port, and ``flags``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "OMNIRTC_SERVER__HOST": "127.0.0.1",
        "OMNIRTC_SERVER__PORT": str(port),
        "OMNIRTC_ENGINE__NAME": "echo",
        "OMNIRTC_WEBRTC__HOST_ADDRESSES": '["127.0.0.1"]',
    }
    process = subprocess.Popen(
        [str(OMNIRTC), "serve", *flags], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)


async def _ready(port: int, context: ssl.SSLContext | bool, process: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"https://127.0.0.1:{port}/readyz", ssl=context) as r:
                    if r.status == 200:
                        return await r.json()
            except aiohttp.ClientConnectionError:
                pass
            assert process.poll() is None, "the server stopped"
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.1)


def _ready_sync(port: int, context: ssl.SSLContext, process: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + 30
    while True:
        try:
            url = f"https://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, context=context, timeout=2) as r:
                return json.load(r)
        except OSError:
            assert process.poll() is None, "the server stopped"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


async def test_a_call_from_the_page_over_https_with_a_self_signed_certificate(
    tmp_path: Path,
) -> None:
    wav = tmp_path / "mic.wav"
    speech = speechlike(2.0, rate=48_000, seed=4)
    write_wav(wav, np.concatenate([silence(1.0), speech, silence(8.0)]), 48_000)
    with serving("--tls-self-signed") as (port, process):
        assert (await _ready(port, False, process))["engine"] == "echo"
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{port}/readyz")  # not trusted by default
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://127.0.0.1:{port}/readyz")  # no plain HTTP
        async with chromium(wav) as browser:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"https://127.0.0.1:{port}/")
            assert await page.evaluate("() => window.isSecureContext")
            await page.click("#call")
            try:
                await page.wait_for_function(
                    "() => window.omnirtcPage.events.some("
                    "e => e.type === 'response.output_text.delta')",
                    timeout=20_000,
                    polling=100,
                )
            except Exception:
                observed = await page.evaluate("() => JSON.stringify(window.omnirtcPage)")
                raise AssertionError(f"page state: {observed}") from None
            observed = json.loads(await page.evaluate("() => JSON.stringify(window.omnirtcPage)"))
            assert not observed["errors"]
            await page.click("#hangup")
            await context.close()
        process.terminate()
        log = (await asyncio.to_thread(process.communicate, timeout=15))[1]
    assert f"open https://localhost:{port}/ to call" in log
    assert "self-signed certificate, SHA-256 fingerprint" in log


def test_the_operators_certificate_is_served_and_bad_files_stop_the_start(
    tmp_path: Path,
) -> None:
    made = self_signed(["localhost"], ["127.0.0.1"])
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(made.cert_pem)
    key.write_bytes(made.key_pem)
    trusted = ssl.create_default_context(cafile=str(cert))
    with serving("--tls-cert", str(cert), "--tls-key", str(key)) as (port, process):
        ready = _ready_sync(port, trusted, process)
        assert ready["ready"] is True
    done = subprocess.run(
        [str(OMNIRTC), "serve", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope")],
        cwd=ROOT,
        env={**os.environ, "OMNIRTC_ENGINE__NAME": "echo", "OMNIRTC_SERVER__PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr
    only_cert = subprocess.run(
        [str(OMNIRTC), "serve", "--tls-cert", str(cert)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert only_cert.returncode == 2
    assert "tls_cert and tls_key go together" in only_cert.stderr

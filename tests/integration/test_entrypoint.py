"""The `omnirtc serve` entry point as the Docker images run it (same command, same settings
from the environment, same health check): the GPU image's with the echo engine instead of
the GPU one, the CPU image's (Dockerfile.cpu) as it is, lite engine and published ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.support.caller import Caller

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST_CANDIDATE = r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host"


def dockerfile(name: str = "Dockerfile") -> tuple[dict[str, str], list[str], list[str]]:
    """The image's final ENV, its CMD and its HEALTHCHECK command."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    check = json.loads(
        re.search(r"CMD (\[.*\])\s*$", text.split("HEALTHCHECK", 1)[1].splitlines()[0]).group(1)
    )  # type: ignore[union-attr]
    return env, cmd, check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local(command: list[str]) -> list[str]:
    """The image's /opt/venv paths mapped to this checkout's virtual environment."""
    return [str(BIN / Path(c).name) if c.startswith("/opt/venv/bin/") else c for c in command]


def test_the_image_command_serves_and_passes_its_health_check() -> None:
    env, cmd, check = dockerfile()
    assert cmd == ["/opt/venv/bin/omnirtc", "serve"]
    assert env["OMNIRTC_ENGINE__NAME"] == "minicpmo"
    port = free_port()
    env.update(
        OMNIRTC_ENGINE__NAME="echo",  # no GPU here; everything else as in the image
        OMNIRTC_SERVER__HOST="127.0.0.1",
        OMNIRTC_SERVER__PORT=str(port),
        OMNIRTC_SERVER__WEB_DIR=str(ROOT / "web"),
        HF_HOME=str(ROOT / ".pytest_cache" / "hf"),
    )
    process = subprocess.Popen(
        local(cmd), cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = json.load(r)
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the server did not start")
                time.sleep(0.1)
        assert ready["engine"] == "echo"
        # Once the engine is warm, the startup heap is collected once and frozen; the
        # collection is timed like every other.
        full = re.compile(r'^omnirtc_gc_pause_seconds_count\{generation="2",[^}]*\} (\S+)$', re.M)
        while (
            not (found := full.search(_get(f"http://127.0.0.1:{port}/metrics")))
            or float(found.group(1)) < 1
        ):
            assert time.monotonic() < deadline + 10, "no full collection was timed"
            time.sleep(0.1)
        health = [c.replace("8080", str(port)) for c in local(check)]
        assert subprocess.run(health, timeout=10, check=False).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log = process.communicate()[1]
    assert f"open http://0.0.0.0:{port}/" not in log
    assert f"open http://localhost:{port}/ to call" in log
    frozen = re.search(r"startup heap frozen: (\d+) objects", log)
    assert frozen and int(frozen.group(1)) > 10_000, log[-2000:]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


def test_bad_settings_stop_the_start_with_a_message() -> None:
    done = subprocess.run(
        [str(BIN / "omnirtc"), "serve"],
        cwd=ROOT,
        env={**os.environ, "OMNIRTC_SERVER__PORT": "99999"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "server.port must be 0..65535" in done.stderr


async def test_the_cpu_image_command_serves_calls_on_its_published_ports() -> None:
    """Dockerfile.cpu as it runs: lite engine, all interfaces, media on the published UDP
    range and announced at 127.0.0.1 (a browser on the machine running the container)."""
    env, cmd, check = dockerfile("Dockerfile.cpu")
    assert cmd == ["/opt/venv/bin/omnirtc", "serve"]
    assert env["OMNIRTC_ENGINE__NAME"] == "lite"
    low, high = json.loads(env["OMNIRTC_WEBRTC__UDP_PORTS"])
    port = free_port()
    env.update(OMNIRTC_SERVER__PORT=str(port), OMNIRTC_SERVER__WEB_DIR=str(ROOT / "web"))
    process = await asyncio.create_subprocess_exec(
        *local(cmd), cwd=ROOT, env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    caller = Caller(url)
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{url}/readyz") as r:
                            if r.status == 200:
                                assert (await r.json())["engine"] == "lite"
                                break
                    assert process.returncode is None, "the server stopped"
                    await asyncio.sleep(0.2)
            health = await asyncio.create_subprocess_exec(
                *[c.replace("8080", str(port)) for c in local(check)]
            )
            assert await health.wait() == 0
            await caller.call(http)
            hosts = re.findall(
                r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", caller.answer_sdp, re.M
            )
            assert hosts, caller.answer_sdp
            assert all(h == "127.0.0.1" and low <= int(p) <= high for h, p in hosts), hosts
            created = await caller.wait_for("session.created", 5)
            assert created[0]["engine"] == "lite"
    finally:
        await caller.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0

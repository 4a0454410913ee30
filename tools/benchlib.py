"""Shared pieces of the benchmarks: a light aiortc client, servers run as subprocesses, CPU
accounting and percentiles.  The client is the same for every server measured in a run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import psutil
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

from realtime.patches import install_patches, use_immediate_jitter_buffer

ROOT = Path(__file__).resolve().parents[1]
RATE = 48_000
FRAME = 960


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    p50, p95 = pct(values, 50), pct(values, 95)
    return f"p50 {p50:7.{digits}f}  p95 {p95:7.{digits}f}  (n={len(values)})"


class ScriptTrack(MediaStreamTrack):
    """Sends audio produced by ``chunk(k)`` for frame k, paced in real time."""

    kind = "audio"

    def __init__(self, chunk: Callable[[int], NDArray[np.float32]]) -> None:
        super().__init__()
        self._chunk = chunk
        self._k = 0
        self._start: float | None = None
        self.sent: dict[int, float] = {}

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._k * FRAME / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = self._chunk(self._k)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._k * FRAME
        frame.time_base = Fraction(1, RATE)
        self.sent[self._k] = time.monotonic()
        self._k += 1
        return frame


async def read_audio(
    track: MediaStreamTrack, sink: Callable[[tuple[float, NDArray[np.float32]]], None]
) -> None:
    """Hand every received frame to ``sink`` as (arrival time, 48 kHz mono float32) until the
    track ends."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            now = time.monotonic()
            for out in resampler.resample(frame):
                sink((now, out.to_ndarray().reshape(-1).copy()))


@dataclass
class BenchCall:
    """One client call: sends a script, records received audio per 20 ms frame."""

    track: ScriptTrack
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    received: deque[tuple[float, NDArray[np.float32]]] = field(
        default_factory=lambda: deque(maxlen=30_000)
    )
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    immediate_jitter_buffer: bool = True
    """Hand each received packet to the decoder at once (else aiortc's stock 4-packet wait)."""
    connect_ms: float = float("nan")
    call_id: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
        install_patches()
        channel = self.pc.createDataChannel("events")
        channel.on("message", lambda m: self.events.append((time.monotonic(), json.loads(m))))
        self.pc.addTrack(self.track)
        connected = asyncio.Event()
        self.pc.on(
            "connectionstatechange",
            lambda: self.pc.connectionState == "connected" and connected.set(),
        )
        self.pc.on("track", self._on_track)
        began = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(
            url, json={**body, "sdp": self.pc.localDescription.sdp, "type": "offer"}
        ) as r:
            answer = await r.json()
            if r.status not in (200, 201):
                raise RuntimeError(f"call refused: {r.status} {answer}")
        self.call_id = answer.get("call_id")
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio" and self.immediate_jitter_buffer:
                use_immediate_jitter_buffer(transceiver.receiver)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        async with asyncio.timeout(15):
            await connected.wait()
        self.connect_ms = (time.monotonic() - began) * 1000

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(read_audio(track, self.received.append)))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def onsets(
    received: deque[tuple[float, NDArray[np.float32]]], since: float, threshold: float = 0.05
) -> list[float]:
    """Arrival times of received frames where sound starts after at least 200 ms of quiet."""
    found: list[float] = []
    quiet = 0.0
    for when, chunk in received:
        if when < since:
            continue
        level = float(np.max(np.abs(chunk))) if chunk.size else 0.0
        if level > threshold:
            if quiet >= 0.2:
                found.append(when)
            quiet = 0.0
        else:
            quiet += chunk.size / RATE
    return found


@dataclass
class ServerProcess:
    """A server in its own process, so its CPU time can be measured alone."""

    args: list[str]
    env: dict[str, str]
    ready_url: str
    proc: asyncio.subprocess.Process | None = None
    start_timeout_s: float = 15.0
    """How long the server may take to be ready (engines warm up first)."""

    async def __aenter__(self) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.ready_url) as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.args}")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)


def omnirtc_server(
    port: int, engine: str = "echo", start_timeout_s: float = 15.0, **env: str
) -> ServerProcess:
    return ServerProcess(
        [sys.executable, "-m", "signaling", "serve", "--port", str(port), "--engine", engine],
        {"OMNIRTC_SERVER__MAX_CALLS": "20", "OMNIRTC_LOGGING__LEVEL": "WARNING", **env},
        f"http://127.0.0.1:{port}/readyz",
        start_timeout_s=start_timeout_s,
    )


def stock_server(port: int) -> ServerProcess:
    return ServerProcess(
        [sys.executable, str(ROOT / "tools" / "stock_echo_server.py"), "--port", str(port)],
        {},
        f"http://127.0.0.1:{port}/healthz",
    )

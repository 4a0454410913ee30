"""A real aiortc peer that calls the server the way the browser page does."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

from realtime.patches import install_patches
from tools.benchlib import read_audio

RATE = 48_000
FRAME = 960


class PlayerTrack(MediaStreamTrack):
    """Sends queued audio (48 kHz mono float32) in real time, silence when nothing is queued."""

    kind = "audio"

    def __init__(self, clock_scale: float = 1.0) -> None:
        super().__init__()
        self.clock_scale = clock_scale
        """Wall seconds per second of media: 1.02 is a sender whose clock runs 2 % slow."""
        self._queue: deque[NDArray[np.float32]] = deque()
        self._pts = 0
        self._start: float | None = None
        self.sent_at: list[tuple[float, int]] = []
        """(monotonic time, pts) of every frame that carried queued audio."""

    def play(self, samples: NDArray[np.float32]) -> None:
        for i in range(0, samples.size, FRAME):
            chunk = samples[i : i + FRAME]
            if chunk.size < FRAME:
                chunk = np.pad(chunk, (0, FRAME - chunk.size))
            self._queue.append(chunk)

    @property
    def pending_s(self) -> float:
        return len(self._queue) * FRAME / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._pts / RATE * self.clock_scale
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._queue:
            chunk = self._queue.popleft()
            self.sent_at.append((time.monotonic(), self._pts))
        else:
            chunk = np.zeros(FRAME, dtype=np.float32)
        pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, RATE)
        self._pts += FRAME
        return frame


class ColourTrack(MediaStreamTrack):
    """A 15 fps video track of one flat colour (RGB), changeable at run time."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int] = (220, 30, 30)) -> None:
        super().__init__()
        self.rgb = rgb
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._pts / 90_000
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        img = np.zeros((240, 320, 3), dtype=np.uint8)
        img[:] = self.rgb
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._pts
        frame.time_base = Fraction(1, 90_000)
        self._pts += 6000
        return frame


class Caller:
    """Calls ``base_url`` with a PlayerTrack (and optionally video) and records what returns."""

    def __init__(
        self, base_url: str, session: dict[str, Any] | None = None, video: bool = False
    ) -> None:
        install_patches()  # aioice offers no 127.0.0.1 candidate without it (loopback-only hosts)
        self.base_url = base_url
        self.session = session or {}
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.player = PlayerTrack()
        self.video = ColourTrack() if video else None
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.received: list[tuple[float, NDArray[np.float32]]] = []
        self.call_id: str | None = None
        self.edit_offer: Callable[[str], str] = lambda sdp: sdp
        """Changes this client's offer before it is applied and sent (SDP munging)."""
        self.edit_sent_offer: Callable[[str], str] = lambda sdp: sdp
        """Changes the offer as sent, after it is applied here (with its candidates)."""
        self.edit_answer: Callable[[str], str] = lambda sdp: sdp
        """Changes the server's answer before this client applies it."""
        self.on_answer: Callable[[RTCPeerConnection], object] = lambda pc: None
        """Called once the answer is applied, before any media is sent."""
        self.answer_sdp = ""
        self.connected = asyncio.Event()
        self.channel_open = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.channel.on("open", self.channel_open.set)
        self.pc.addTrack(self.player)
        if self.video is not None:
            self.pc.addTrack(self.video)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    def _on_message(self, message: str) -> None:
        self.events.append((time.monotonic(), json.loads(message)))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(read_audio(track, self.received.append)))

    async def offer(self) -> str:
        offer = await self.pc.createOffer()
        offer.sdp = self.edit_offer(offer.sdp)
        await self.pc.setLocalDescription(offer)
        return self.edit_sent_offer(str(self.pc.localDescription.sdp))

    async def call(
        self,
        http: aiohttp.ClientSession,
        connect_timeout: float = 10.0,
        events: bool = True,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Offer, apply the answer and wait until connected (and the events channel is open,
        unless ``events`` is False)."""
        sdp = await self.offer()
        async with http.post(
            f"{self.base_url}/v1/calls",
            json={"sdp": sdp, "type": "offer", "session": self.session},
            headers=headers,
        ) as response:
            body = await response.json()
            assert response.status == 201, body
            assert response.headers["Location"] == f"/v1/calls/{body['call_id']}"
        self.call_id = body["call_id"]
        self.answer_sdp = body["sdp"]
        answer = self.edit_answer(body["sdp"])
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self.on_answer(self.pc)
        async with asyncio.timeout(connect_timeout):
            if events:
                await self.connected.wait()
                await self.channel_open.wait()
            else:
                await self._audio_transport_connected()
        return dict(body)

    async def _audio_transport_connected(self) -> None:
        transport = next(t for t in self.pc.getTransceivers() if t.kind == "audio").sender.transport
        while transport.state != "connected":
            await asyncio.sleep(0.02)

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    async def wait_for(self, kind: str, timeout: float, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.of_type(kind)) < count:
                await asyncio.sleep(0.02)
        return self.of_type(kind)

    async def wait_for_unit(self, index: int, timeout: float) -> list[dict[str, Any]]:
        """The unit reports up to and including unit ``index``'s. A unit's report follows its
        text delta on the data channel, so it may not be here yet when the delta is."""
        async with asyncio.timeout(timeout):
            while not any(u["index"] >= index for u in self.of_type("unit")):
                await asyncio.sleep(0.02)
        return [u for u in self.of_type("unit") if u["index"] <= index]

    def audio(self, since: float = 0.0) -> NDArray[np.float32]:
        chunks = [c for t, c in self.received if t >= since]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def first_loud(self, since: float, threshold: float = 0.02) -> float | None:
        """Arrival time of the first received 20 ms frame louder than ``threshold`` RMS."""
        for t, chunk in self.received:
            if t >= since and float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) > threshold:
                return t
        return None

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def call_snapshot(http: aiohttp.ClientSession, base_url: str, call_id: str) -> dict[str, Any]:
    """GET /v1/calls/{call_id}: the call's state and counters."""
    async with http.get(f"{base_url}/v1/calls/{call_id}") as r:
        assert r.status == 200
        return dict(await r.json())


async def make_offer() -> str:
    """A real aiortc offer (audio and the events channel), for tests that POST it themselves."""
    caller = Caller("http://unused")
    try:
        return await caller.offer()
    finally:
        await caller.close()


async def wait_ended(
    http: aiohttp.ClientSession, base_url: str, call_id: str, timeout: float
) -> dict[str, Any]:
    """Poll the call's snapshot until it has ended; returns that snapshot."""
    async with asyncio.timeout(timeout):
        while True:
            snap = await call_snapshot(http, base_url, call_id)
            if snap["state"] == "ended":
                return snap
            await asyncio.sleep(0.1)


async def readyz(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """GET /readyz: the engine's readiness, replicas and queue."""
    async with http.get(f"{base_url}/readyz") as r:
        return dict(await r.json())

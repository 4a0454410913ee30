"""One client's call to an omnirtc server, kept up across network losses.

``start`` offers the tracks, posts the offer (``POST /v1/calls``), applies the answer and
waits until the call is connected.  Events from the ``events`` data channel come out of
``events()``; the service's speech is recorded (``speech``) and can be played or saved.

When the call is lost (the connection fails, or the server ends it for any reason but a
hang-up) the client calls again, up to ``reconnect`` times with a growing pause, and says so
in its event stream (``client.reconnecting``, ``client.reconnected``); the same tracks go on
into the new call.  ``hangup`` ends it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from omnirtc_client.media import SpeechRecorder
from realtime.patches import install_patches, offering_host_addresses, use_immediate_jitter_buffer

log = logging.getLogger(__name__)

MAX_EVENTS = 1000
"""Events kept for a reader that falls behind (the oldest go first)."""
FINAL_REASONS = frozenset({"deleted", "hangup"})
"""Ends after which the client does not call again (someone meant to hang up)."""


class ClientError(Exception):
    """The server refused the call; ``code`` and ``status`` say why."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


class CallEnded(Exception):
    """The call ended and will not be called again; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the call ended: {reason}")
        self.reason = reason


class OmniClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: dict[str, Any] | None = None,
        ice_servers: tuple[RTCIceServer, ...] = (),
        host_addresses: tuple[str, ...] = (),
        reconnect: int = 3,
        reconnect_delay_s: float = 1.0,
        connect_timeout_s: float = 15.0,
    ) -> None:
        install_patches()
        self.base_url = base_url.rstrip("/")
        self.session = session or {}
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ice_servers = list(ice_servers)
        self._host_addresses = host_addresses
        self._reconnect = reconnect
        self._delay_s = reconnect_delay_s
        self._connect_timeout_s = connect_timeout_s
        self._audio: MediaStreamTrack | None = None
        self._video: MediaStreamTrack | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._new_event = asyncio.Event()
        self._lost = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.call_id: str | None = None
        self.calls: list[str] = []
        """Every call id this client has had (more than one after reconnecting)."""
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self.speech = SpeechRecorder()
        """The service's speech from every call this client made, 48 kHz mono."""

    async def __aenter__(self) -> OmniClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hangup()

    # ------------------------------------------------------------ the call

    async def start(
        self, audio: MediaStreamTrack | None = None, video: MediaStreamTrack | None = None
    ) -> str:
        """Call with these tracks (none: listen only); returns the call id.  Raises
        ClientError when the server refuses, TimeoutError when it never connects."""
        if self._supervisor is not None:
            raise RuntimeError("this client has already started a call")
        self._audio, self._video = audio, video
        self._http = aiohttp.ClientSession()
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="omnirtc-client")
        assert self.call_id is not None
        return self.call_id

    def send(self, message: dict[str, Any]) -> bool:
        """Send a client event (``{"type": "response.cancel"}``, say); False if the
        channel is not open."""
        if self._channel is None or self._channel.readyState != "open":
            return False
        self._channel.send(json.dumps(message))
        return True

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event, in order, until the call has ended for good."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self.ended.is_set():
                return
            self._new_event.clear()
            await self._new_event.wait()

    async def wait_for(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The next event of type ``kind`` (events before it are consumed)."""
        async with asyncio.timeout(timeout_s):
            async for event in self.events():
                if event.get("type") == kind:
                    return event
        raise CallEnded(self.end_reason or "ended")

    async def hangup(self) -> None:
        """End the call for good (idempotent): the server is told, everything is closed."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._drop_connection(tell_server=True)
        if self._http is not None:
            await self._http.close()
        self._finish(self.end_reason or "hangup")

    # ------------------------------------------------------------ internals

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            await self._lost.wait()
            reason = self.end_reason or "connection_lost"
            await self._drop_connection(tell_server=False)
            if reason in FINAL_REASONS or attempt >= self._reconnect:
                self._finish(reason)
                return
            attempt += 1
            self._push({"type": "client.reconnecting", "attempt": attempt, "reason": reason})
            await asyncio.sleep(self._delay_s * attempt)
            try:
                await self._connect()
            except (ClientError, TimeoutError, aiohttp.ClientError) as exc:
                log.warning("reconnecting failed: %s", exc)
                self.end_reason = "reconnect_failed"
                self._lost.set()
                continue
            self._push({"type": "client.reconnected", "call_id": self.call_id})
            attempt = 0

    async def _connect(self) -> None:
        assert self._http is not None
        self._lost.clear()
        self.end_reason = None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        self._pc = pc
        connected = asyncio.Event()
        opened = asyncio.Event()
        channel = pc.createDataChannel("events")
        self._channel = channel
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        if self._audio is not None:
            sender = pc.addTrack(self._audio)
        else:
            sender = pc.addTransceiver("audio", direction="recvonly").sender
        receiver = next(t.receiver for t in pc.getTransceivers() if t.sender is sender)
        use_immediate_jitter_buffer(receiver)
        if self._video is not None:
            pc.addTransceiver(self._video, direction="sendonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self.speech.record(track))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed") and pc is self._pc:
                self._lost.set()

        with offering_host_addresses(self._host_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "session": self.session}
        async with self._http.post(
            f"{self.base_url}/v1/calls", json=body, headers=self._headers
        ) as response:
            answer = await response.json(content_type=None)
            if response.status != 201:
                await pc.close()
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                retry = response.headers.get("Retry-After")
                raise ClientError(
                    response.status,
                    error.get("code", "http_error"),
                    error.get("message", response.reason or ""),
                    float(retry) if retry else None,
                )
        self.call_id = answer["call_id"]
        self.calls.append(answer["call_id"])
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        async with asyncio.timeout(self._connect_timeout_s):
            await connected.wait()
            await opened.wait()

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self._push(event)
        if event.get("type") == "session.closed":
            self.end_reason = str(event.get("reason", "ended"))
            self._lost.set()

    def _push(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._new_event.set()

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_connection(self, tell_server: bool) -> None:
        pc, self._pc = self._pc, None
        call_id = self.call_id
        if tell_server and call_id and self._http is not None and not self._http.closed:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._http.delete(
                        f"{self.base_url}/v1/calls/{call_id}", headers=self._headers
                    )
        if pc is not None:
            await pc.close()
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finish(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            self._new_event.set()

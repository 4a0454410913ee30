"""The one module that touches aiortc: the call's peer connection and its tracks.

It also holds the three named patches we apply to aiortc/aioice (each tested in
tests/unit/test_peer_patches.py):

* ``host candidates``: aioice never offers 127.0.0.1 and offers every interface it finds; the
  addresses come from settings instead (per call, through a context variable), and a machine
  with only loopback offers 127.0.0.1.
* ``immediate audio jitter buffer``: aiortc holds 4 audio packets (about 80 ms) before decoding
  the first; ours hands each Opus packet to the decoder as it comes and drops packets older
  than one already handed on (the slicer turns such gaps into silence).
* ``vectorised audio level``: aiortc computes the level of every outgoing audio frame in a
  pure-Python loop (about half of a call's CPU); ours computes the same value with numpy.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import rtp as aiortc_rtp
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from realtime.audio import ReceivedAudio
from realtime.config import PeerConfig
from realtime.errors import InvalidOffer, UnsupportedMedia
from realtime.offer import bundle_as_offered, read_offer, with_rejected

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- patches

_host_addresses: ContextVar[tuple[str, ...]] = ContextVar("omnirtc_host_addresses", default=())
_original_get_host_addresses = aioice.ice.get_host_addresses
_original_audio_level = aiortc_rtp.compute_audio_level_dbov


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _host_addresses.get()
    if chosen:
        return list(chosen)
    found: list[str] = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return found or ["127.0.0.1"]


def audio_level_dbov(frame: av.AudioFrame) -> int:
    """RFC 6465 audio level, the same value aiortc computes, without a Python loop."""
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    energy = float(np.sum(samples * samples))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767)) if frame.samples else 0.0
    if rms <= 0:
        return -127
    return round(min(0.0, max(-127.0, 20 * math.log10(rms))))


def install_patches() -> None:
    """Apply the host-candidate and audio-level patches (idempotent)."""
    aioice.ice.get_host_addresses = _get_host_addresses
    aiortc_rtp.compute_audio_level_dbov = audio_level_dbov


DTX_MAX_BYTES = 2
"""An Opus packet this small is a DTX frame: a bare TOC byte, no audio (RFC 6716 3.1)."""


@dataclass(frozen=True, slots=True)
class PacketNote:
    """What an audio packet told us, kept until its decoded frame is read."""

    lost_before: int
    """Packets missing by sequence number between the previous one and this one."""
    dtx: bool


class ImmediateAudioJitterBuffer:
    """Hands every audio packet on at once, in order; late or repeated packets are dropped.

    It notes, for each frame it hands on, how many packets were lost before it and whether
    it is a DTX frame, so the inbound path tells lost media from a quiet sender.  aiortc
    rewrites a handed-on frame's timestamp (to start at 0) before decoding it with that as
    the decoded frame's pts: the note is found again through the frame object itself.
    """

    capacity = 16
    _RESET_DISTANCE = 100
    _NOTES = 64

    def __init__(self) -> None:
        self._last: int | None = None
        self.dropped = 0
        self.lost = 0
        self._notes: deque[tuple[JitterFrame, PacketNote]] = deque(maxlen=self._NOTES)

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        sequence: int = packet.sequence_number
        lost = 0
        if self._last is not None:
            behind = (self._last - sequence) & 0xFFFF
            if behind < self._RESET_DISTANCE:
                self.dropped += 1
                return False, None
            ahead = (sequence - self._last - 1) & 0xFFFF
            lost = ahead if ahead < self._RESET_DISTANCE * 10 else 0
        self._last = sequence
        self.lost += lost
        data: bytes = packet._data
        frame = JitterFrame(data=data, timestamp=packet.timestamp)
        self._notes.append((frame, PacketNote(lost, len(data) <= DTX_MAX_BYTES)))
        return False, frame

    def note(self, pts: int | None) -> PacketNote | None:
        """The note of the frame that decoded to this pts (once), None if unknown."""
        if pts is None:
            return None
        for i, (frame, note) in enumerate(self._notes):
            if frame.timestamp == pts:
                del self._notes[i]
                return note
        return None


_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"


def use_immediate_jitter_buffer(receiver: Any) -> ImmediateAudioJitterBuffer:
    if not hasattr(receiver, _JITTER_ATTR):
        raise RuntimeError("aiortc's receiver has no jitter buffer where expected: check the pin")
    buffer = ImmediateAudioJitterBuffer()
    setattr(receiver, _JITTER_ATTR, buffer)
    return buffer


# ---------------------------------------------------------------- tracks

FrameSource = Callable[[], Awaitable[av.AudioFrame]]


class SourceTrack(MediaStreamTrack):
    """An outbound audio track whose frames come from ``source`` (paced by the source)."""

    kind = "audio"

    def __init__(self, source: FrameSource) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._source()


class FrameRelay:
    """Loopback: inbound frames go straight back out, restamped; bounded, drops the oldest."""

    def __init__(self, max_frames: int = 10) -> None:
        self._frames: deque[av.AudioFrame] = deque(maxlen=max_frames)
        self._ready = asyncio.Event()
        self._pts = 0
        self.dropped = 0

    def put(self, frame: av.AudioFrame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    async def next_frame(self) -> av.AudioFrame:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        frame.pts = self._pts
        self._pts += frame.samples
        return frame


# ---------------------------------------------------------------- the peer


class PeerState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CLOSED = "closed"


class EventsChannel:
    """The 'events' data channel, as realtime.events.DataPort."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    @property
    def is_open(self) -> bool:
        return bool(self._channel.readyState == "open")

    @property
    def buffered_bytes(self) -> int:
        return int(self._channel.bufferedAmount)

    def send(self, text: str) -> None:
        self._channel.send(text)


class Peer:
    """One call's RTCPeerConnection, with its inbound tracks and its 'events' channel."""

    def __init__(self, config: PeerConfig, clock: Callable[[], float]) -> None:
        servers = [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in config.ice_servers
        ]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._config = config
        self._clock = clock
        self.audio_in: MediaStreamTrack | None = None
        self.video_in: MediaStreamTrack | None = None
        self.state = PeerState.NEW
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        """Set when the connection failed or closed."""
        self.last_activity = clock()
        """Monotonic time of the last media frame or data-channel message."""
        self.on_channel: Callable[[EventsChannel], None] = lambda _: None
        self.on_message: Callable[[str | bytes], None] = lambda _: None
        self.jitter_buffers: list[ImmediateAudioJitterBuffer] = []
        self._media_transport: Any = None
        self._pc.on("track", self._on_track)
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("connectionstatechange", self._on_state)

    @property
    def client_sends_audio(self) -> bool:
        return self.audio_in is not None

    async def answer(self, offer_sdp: str, outbound: FrameSource) -> str:
        """Negotiate: set the offer, attach our audio track, return the answer SDP.

        Raises InvalidOffer or UnsupportedMedia (realtime.offer says what is taken)."""
        # Reading a large offer is pure Python: off the loop, so calls on it keep their pace.
        offer = await asyncio.to_thread(read_offer, offer_sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            raise InvalidOffer(f"the SDP offer was rejected: {message}") from None
        audio = [t for t in self._pc.getTransceivers() if t.kind == "audio"]
        if len(audio) != 1:
            raise UnsupportedMedia("the offer has no usable audio section")
        self.jitter_buffers.append(use_immediate_jitter_buffer(audio[0].receiver))
        self._watch_media_transport(audio[0].receiver.transport)
        self._pc.addTrack(SourceTrack(outbound))
        token = _host_addresses.set(self._config.host_addresses)
        try:
            answer = await self._pc.createAnswer()
            shaped = bundle_as_offered(answer.sdp, offer)
            await self._pc.setLocalDescription(RTCSessionDescription(shaped, "answer"))
        except Exception as exc:
            raise InvalidOffer(f"could not answer the offer: {exc}") from None
        finally:
            _host_addresses.reset(token)
        return with_rejected(str(self._pc.localDescription.sdp), offer)

    async def audio_frames(self) -> AsyncIterator[ReceivedAudio]:
        """Decoded inbound audio, with what each frame's packet said (loss, DTX)."""
        buffer = self.jitter_buffers[0] if self.jitter_buffers else None
        async for frame in self._frames(self.audio_in):
            note = buffer.note(frame.pts) if buffer is not None else None
            if note is None:
                yield ReceivedAudio(frame)
            else:
                yield ReceivedAudio(frame, note.lost_before, note.dtx)

    async def video_frames(self) -> AsyncIterator[av.VideoFrame]:
        async for frame in self._frames(self.video_in):
            yield frame

    async def _frames(self, track: MediaStreamTrack | None) -> AsyncIterator[Any]:
        if track is None:
            return
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.last_activity = self._clock()
            yield frame

    async def close(self) -> None:
        await self._pc.close()
        self.state = PeerState.CLOSED
        self.ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.audio_in is None:
            self.audio_in = track
        elif track.kind == "video" and self.video_in is None:
            self.video_in = track

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "events":
            log.info("ignoring data channel %r", channel.label)
            return
        port = EventsChannel(channel)

        def on_message(message: str | bytes) -> None:
            self.last_activity = self._clock()
            try:
                self.on_message(message)
            except Exception:
                # Never let a client's message raise into aiortc's receive loop: it would
                # close the whole connection.
                log.exception("data-channel message handler failed")

        channel.on("message", on_message)
        channel.on("open", lambda: self.on_channel(port))
        if port.is_open:
            self.on_channel(port)

    def _watch_media_transport(self, transport: Any) -> None:
        """The call lives on its audio's transport.  The whole connection counts as connected
        only once every transport is, and a client may never open its data channel's (a
        client that bundled what we did not, or that has no use for events): its call still
        runs, without events."""

        def changed() -> None:
            if transport.state == "connected":
                self.connected.set()
            elif transport.state in ("failed", "closed"):
                self.ended.set()

        self._media_transport = transport
        transport.on("statechange", changed)

    def _on_state(self) -> None:
        self.state = PeerState(self._pc.connectionState)
        if self.state is PeerState.CONNECTED:
            self.connected.set()
        elif self.state is PeerState.CLOSED or (
            self.state is PeerState.FAILED
            and getattr(self._media_transport, "state", None) != "connected"
        ):
            self.ended.set()

"""The call's peer connection (aiortc) and its tracks.

With realtime.offer (what we take from an offer) and realtime.patches (our named changes to
aiortc and aioice), the only modules that touch aiortc.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from realtime.audio import ReceivedAudio
from realtime.config import PeerConfig
from realtime.errors import InvalidOffer, UnsupportedMedia
from realtime.offer import announce, bundle_as_offered, read_offer, with_rejected
from realtime.patches import (
    ImmediateAudioJitterBuffer,
    install_patches,
    offering_host_addresses,
    use_immediate_jitter_buffer,
    use_inband_fec,
)
from realtime.trickle import InvalidFragment, Trickle

log = logging.getLogger(__name__)

MAX_TRICKLED_TOTAL = 64
"""Remote candidates a client may trickle over a whole call."""

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
        install_patches()
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
        self.remote_ufrag: str | None = None
        """The client's ICE username fragment, from its offer."""
        self.local_ufrag: str | None = None
        """Ours, from the answer."""
        self.trickled = 0
        """Remote candidates the client added after its offer (trickle ICE)."""
        self.inband_fec = False
        """The client offered Opus in-band FEC: we ask for it and send it (realtime.patches)."""
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
        if offer.opus_fec:
            self.inband_fec = use_inband_fec(self._pc) > 0
        self._watch_media_transport(audio[0].receiver.transport)
        self._pc.addTrack(SourceTrack(outbound))
        try:
            with offering_host_addresses(self._config.host_addresses, self._config.port_range):
                answer = await self._pc.createAnswer()
                shaped = bundle_as_offered(answer.sdp, offer)
                await self._pc.setLocalDescription(RTCSessionDescription(shaped, "answer"))
        except Exception as exc:
            raise InvalidOffer(f"could not answer the offer: {exc}") from None
        answer_sdp = with_rejected(str(self._pc.localDescription.sdp), offer)
        self.remote_ufrag = _ufrag(offer.sdp)
        self.local_ufrag = _ufrag(answer_sdp)
        if self._config.announced_address:
            answer_sdp = announce(answer_sdp, self._config.announced_address)
        return answer_sdp

    async def add_trickle(self, trickle: Trickle) -> None:
        """Add candidates the client trickles after its offer (and its end-of-candidates).

        Raises InvalidFragment for a candidate aiortc cannot read, or once the client has
        trickled MAX_TRICKLED_TOTAL candidates."""
        if self.trickled + len(trickle.candidates) > MAX_TRICKLED_TOTAL:
            raise InvalidFragment(f"more than {MAX_TRICKLED_TOTAL} trickled candidates")
        for mid, line in trickle.candidates:
            try:
                candidate = candidate_from_sdp(line.removeprefix("candidate:"))
            except (AssertionError, ValueError, IndexError):
                raise InvalidFragment(f"not an ICE candidate: {line[:80]!r}") from None
            candidate.sdpMid = mid
            if mid is None:
                candidate.sdpMLineIndex = 0
            await self._pc.addIceCandidate(candidate)
            self.trickled += 1
        if trickle.end:
            await self._pc.addIceCandidate(None)

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


def _ufrag(sdp: str) -> str | None:
    """The first ``a=ice-ufrag`` of an SDP."""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.removeprefix("a=ice-ufrag:").strip()
    return None

"""Our named changes to aiortc and aioice, for the versions pyproject.toml pins.

Each is tested in tests/unit/test_peer_patches.py, against aiortc's own behaviour:

* ``host candidates``: aioice never offers 127.0.0.1 and offers every interface it finds; the
  addresses come from settings instead (per call, through a context variable), and a machine
  with only loopback offers 127.0.0.1.
* ``immediate audio jitter buffer``: aiortc holds 4 audio packets (about 80 ms) before decoding
  the first; ours hands each Opus packet to the decoder as it comes and drops packets older
  than one already handed on (the slicer turns such gaps into silence).  It also notes lost
  packets and DTX frames for the inbound path.
* ``vectorised audio level``: aiortc computes the level of every outgoing audio frame in a
  pure-Python loop (about half of a call's CPU); ours computes the same value with numpy.
* ``Opus in-band FEC``: aiortc never asks for in-band FEC and its Opus encoder never makes it.
  ``use_inband_fec`` marks a peer's negotiated Opus codec ``useinbandfec=1`` (so the answer's
  fmtp asks the client for FEC), and the encoder aiortc then builds for that codec runs libopus
  with FEC on (``FecOpusEncoder``: each packet also carries the previous frame at a lower
  rate, which a receiver that decodes FEC, as browsers do, uses when a packet is lost).
* ``Opus loss repair``: aiortc's Opus decoder (FFmpeg's) never learns that a packet was lost,
  so a lost packet is 20 ms of silence and FEC data is never read.  Ours
  (realtime.opus_decoder) calls libopus itself: the packet before one that arrives is rebuilt
  from its FEC data, earlier lost ones are concealed.  The immediate jitter buffer tells it
  how many packets were lost before each one.
* ``UDP port range``: aioice binds each ICE socket to any free port, so a container cannot
  publish them; with ``webrtc.udp_ports`` set, sockets bound while gathering take a free port
  of that range.  The seam is the one ``asyncio`` name in ``aioice.ice``: its
  ``get_running_loop()`` hands aioice, during gathering only, the running loop with a
  ``create_datagram_endpoint`` that picks the port.

They reach into aiortc's internals, so ``install_patches`` refuses to run on other versions
than those they were written for (``PatchedVersionError``), at start, with what to do.
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
import types
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import codecs as aiortc_codecs
from aiortc import rtcrtpreceiver as aiortc_receiver
from aiortc import rtcrtpsender as aiortc_sender
from aiortc import rtp as aiortc_rtp
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from realtime.opus_decoder import NotedFrame, RepairingOpusDecoder, libopus

WRITTEN_FOR = {"aiortc": "1.16.", "aioice": "0.13."}
"""The release series each patch was written and tested against."""


class PatchedVersionError(RuntimeError):
    """aiortc or aioice is not a version our patches were written for."""


def check_versions() -> None:
    wrong = []
    for package, series in WRITTEN_FOR.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = "none"
        if not installed.startswith(series):
            wrong.append(f"{package} {installed} (need {series}x)")
    if wrong:
        raise PatchedVersionError(
            "omnirtc patches aiortc internals and was written for other versions than those "
            f"installed: {', '.join(wrong)}; install the locked versions "
            "(pip install -c constraints.txt -e ., or make install)"
        )


_host_addresses: ContextVar[tuple[str, ...]] = ContextVar("omnirtc_host_addresses", default=())
_original_get_host_addresses = aioice.ice.get_host_addresses
_original_get_encoder = aiortc_codecs.get_encoder
_original_get_decoder = aiortc_codecs.get_decoder
AIORTC_AUDIO_LEVEL = aiortc_rtp.compute_audio_level_dbov
"""aiortc's own audio level, which ours replaces (the tests compare the two)."""


_udp_ports: ContextVar[tuple[int, int] | None] = ContextVar("omnirtc_udp_ports", default=None)


@contextmanager
def offering_host_addresses(
    addresses: tuple[str, ...], udp_ports: tuple[int, int] | None = None
) -> Iterator[None]:
    """Within this block, ICE gathering offers ``addresses`` (all interfaces when empty) on
    ports of ``udp_ports`` (low, high; any free port when None)."""
    addresses_token = _host_addresses.set(addresses)
    ports_token = _udp_ports.set(udp_ports)
    try:
        yield
    finally:
        _udp_ports.reset(ports_token)
        _host_addresses.reset(addresses_token)


class NoFreePort(OSError):
    """Every port of the configured UDP range is in use."""


class _PortRangeLoop:
    """The running loop, but datagram endpoints bound to port 0 take a port of a range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: tuple[int, int]) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, factory: Callable[[], Any], local_addr: tuple[str, int] | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(
                factory, local_addr=local_addr, **kwargs
            )
        low, high = self._ports
        count = high - low + 1
        first = random.randrange(count)  # spread calls over the range
        for step in range(count):
            port = low + (first + step) % count
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, local_addr=(local_addr[0], port), **kwargs
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise NoFreePort(errno.EADDRINUSE, f"no free UDP port in {low}-{high} (webrtc.udp_ports)")


class _AioiceAsyncio(types.ModuleType):
    """What ``asyncio`` means inside ``aioice.ice``: asyncio itself, except that while a
    port range is in force ``get_running_loop()`` returns the loop that binds within it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        ports = _udp_ports.get()
        return _PortRangeLoop(loop, ports) if ports is not None else loop


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


OPUS_FEC_LOSS_PERCENT = 10
"""The packet loss our Opus encoder plans its FEC for (libopus spends more bits on FEC, and
keeps to its SILK-based modes that carry it, the higher this is)."""


class FecOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder with libopus in-band FEC (LBRR) on."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.options = {
            **self.codec.options,
            "fec": "1",
            "packet_loss": str(OPUS_FEC_LOSS_PERCENT),
        }


def _wants_fec(codec: Any) -> bool:
    return bool(
        codec.mimeType.lower() == "audio/opus" and codec.parameters.get("useinbandfec") == 1
    )


def _get_encoder(codec: Any) -> Any:
    if _wants_fec(codec):
        return FecOpusEncoder()
    return _original_get_encoder(codec)


def _get_decoder(codec: Any) -> Any:
    lib = libopus() if codec.mimeType.lower() == "audio/opus" else None
    if lib is not None:
        return RepairingOpusDecoder(lib)
    return _original_get_decoder(codec)


def use_inband_fec(pc: Any) -> int:
    """Mark ``pc``'s negotiated Opus codecs ``useinbandfec=1`` (after its remote description
    is set, before it answers or sends): its SDP asks for FEC, its encoder makes FEC.
    Returns how many codecs were marked.  (Not before the remote description: until then an
    offerer's codecs are aiortc's shared defaults.)"""
    marked = 0
    for transceiver in pc.getTransceivers():
        for codec in transceiver._codecs:
            if codec.mimeType.lower() == "audio/opus":
                codec.parameters["useinbandfec"] = 1
                marked += 1
    return marked


def install_patches() -> None:
    """Apply the host-candidate and audio-level patches (idempotent); raises
    PatchedVersionError on versions they were not written for."""
    if aioice.ice.get_host_addresses is _get_host_addresses:
        return
    check_versions()
    aioice.ice.asyncio = _AioiceAsyncio("asyncio")  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = _get_host_addresses
    aiortc_rtp.compute_audio_level_dbov = audio_level_dbov
    aiortc_sender.get_encoder = _get_encoder  # type: ignore[attr-defined]
    aiortc_receiver.get_decoder = _get_decoder  # type: ignore[attr-defined]


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
        frame = NotedFrame(data, packet.timestamp, lost)
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

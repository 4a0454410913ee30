"""Our patches of aiortc and aioice (realtime.patches), tested against aiortc's own behaviour."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aioice.ice
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from realtime import patches
from realtime.patches import (
    AIORTC_AUDIO_LEVEL,
    ImmediateAudioJitterBuffer,
    PatchedVersionError,
    audio_level_dbov,
    check_versions,
    install_patches,
    offering_host_addresses,
    use_immediate_jitter_buffer,
)


def _packet(sequence: int, payload: bytes = b"\xfc\x01\x02\x03", step: int = 960) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=sequence & 0xFFFF)
    packet.timestamp = (sequence * step) & 0xFFFFFFFF
    packet.payload = payload
    packet._data = payload  # aiortc's receiver sets this from the depayloader
    return packet


def _frames(buffer: JitterBuffer | ImmediateAudioJitterBuffer, packets: list[RtpPacket]) -> list:
    out: list[tuple[int, JitterFrame | None]] = []
    for i, packet in enumerate(packets):
        _, frame = buffer.add(packet)
        out.append((i, frame))
    return out


# ---------------------------------------------------------------- host candidates


def test_host_candidates_come_from_settings_and_loopback_is_a_last_resort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install_patches()
    with offering_host_addresses(("192.0.2.7",)):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["192.0.2.7"]
    monkeypatch.setattr(patches, "_original_get_host_addresses", lambda **_: [])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]


def test_aioice_itself_never_offers_loopback() -> None:
    """Why the patch exists: on a loopback-only host aioice offers nothing at all."""
    found = patches._original_get_host_addresses(use_ipv4=True, use_ipv6=True)
    assert "127.0.0.1" not in found
    assert "::1" not in found


async def test_a_real_ice_agent_gathers_the_chosen_address() -> None:
    install_patches()
    connection = aioice.Connection(ice_controlling=True)
    try:
        with offering_host_addresses(("127.0.0.1",)):
            await connection.gather_candidates()
        hosts = {c.host for c in connection.local_candidates if c.type == "host"}
        assert hosts == {"127.0.0.1"}
    finally:
        await connection.close()


# ---------------------------------------------------------------- jitter buffer


def test_aiortc_holds_audio_back_and_ours_hands_every_packet_on_at_once() -> None:
    packets = [_packet(n) for n in range(30)]
    stock = _frames(JitterBuffer(capacity=16, prefetch=4), packets)
    ours = _frames(ImmediateAudioJitterBuffer(), packets)
    assert all(frame is not None for _, frame in ours)
    assert [f.timestamp for _, f in ours if f] == [p.timestamp for p in packets]
    first_stock = next(i for i, f in stock if f is not None)
    assert first_stock >= 4, "aiortc waits for 4 packets (80 ms) before the first frame"
    # The same frames come out, in the same order: aiortc's only later.
    stock_stamps = [f.timestamp for _, f in stock if f]
    assert stock_stamps == [p.timestamp for p in packets][: len(stock_stamps)]


def test_late_and_repeated_packets_are_dropped_and_losses_noted() -> None:
    buffer = ImmediateAudioJitterBuffer()
    order = [0, 1, 2, 4, 3, 4, 5, 9, 10]
    handed = [f.timestamp // 960 for _, f in _frames(buffer, [_packet(n) for n in order]) if f]
    assert handed == [0, 1, 2, 4, 5, 9, 10]
    assert buffer.dropped == 2  # 3 came after 4; 4 came twice
    assert buffer.lost == 1 + 3  # 3 never made it in time; 6, 7 and 8 never came
    assert buffer.note(9 * 960) == patches.PacketNote(lost_before=3, dtx=False)
    assert buffer.note(9 * 960) is None, "a note is read once"


def test_sequence_numbers_wrap_and_a_restarted_stream_is_followed() -> None:
    buffer = ImmediateAudioJitterBuffer()
    wrapping = [_packet(n) for n in range(65530, 65542)]
    assert all(f is not None for _, f in _frames(buffer, wrapping))
    assert (buffer.dropped, buffer.lost) == (0, 0)
    _, restarted = buffer.add(_packet(20_000))
    assert restarted is not None, "a sender that restarts its sequence is followed"


def test_a_dtx_frame_is_noted() -> None:
    buffer = ImmediateAudioJitterBuffer()
    buffer.add(_packet(1))
    _, frame = buffer.add(_packet(2, payload=b"\xfc"))
    assert frame is not None
    assert buffer.note(2 * 960) == patches.PacketNote(lost_before=0, dtx=True)


async def test_our_buffer_replaces_aiortcs_in_a_real_receiver() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, JitterBuffer)  # type: ignore[attr-defined]
        ours = use_immediate_jitter_buffer(receiver)
        assert receiver._RTCRtpReceiver__jitter_buffer is ours  # type: ignore[attr-defined]
    finally:
        await pc.close()


def test_a_receiver_without_the_expected_buffer_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="check the pin"):
        use_immediate_jitter_buffer(object())


# ---------------------------------------------------------------- audio level


def _s16_frame(samples: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 48_000
    frame.time_base = Fraction(1, 48_000)
    return frame


@pytest.mark.parametrize("level", [0.0, 1e-5, 3e-4, 0.01, 0.2, 0.7, 1.0])
def test_our_audio_level_is_aiortcs(level: float) -> None:
    rng = np.random.default_rng(int(level * 1e6))
    samples = (rng.uniform(-1, 1, 960) * level * 32767).astype(np.int16)
    frame = _s16_frame(samples)
    assert audio_level_dbov(frame) == AIORTC_AUDIO_LEVEL(frame)


def test_the_sender_uses_our_audio_level() -> None:
    install_patches()
    assert aiortc.rtcrtpsender.rtp.compute_audio_level_dbov is audio_level_dbov


# ---------------------------------------------------------------- versions


def test_other_aiortc_versions_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    check_versions()  # the pinned versions pass
    real = patches.version
    monkeypatch.setattr(
        patches, "version", lambda name: "1.17.0" if name == "aiortc" else real(name)
    )
    with pytest.raises(PatchedVersionError, match=r"aiortc 1\.17\.0 \(need 1\.16\.x\)"):
        check_versions()
    # install_patches checks before patching anything.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", patches._original_get_host_addresses)
    with pytest.raises(PatchedVersionError):
        install_patches()
    assert aioice.ice.get_host_addresses is patches._original_get_host_addresses


# ---------------------------------------------------------------- UDP port range


async def test_ice_sockets_bind_within_the_port_range_until_it_is_full() -> None:
    install_patches()
    low, high = 41_230, 41_233
    connections = [aioice.Connection(ice_controlling=True) for _ in range(high - low + 2)]
    try:
        ports = []
        for connection in connections:
            with offering_host_addresses(("127.0.0.1",), (low, high)):
                await connection.gather_candidates()
            ports.append([c.port for c in connection.local_candidates if c.type == "host"])
        assert sorted(p for found in ports[:-1] for p in found) == list(range(low, high + 1))
        assert ports[-1] == [], "a full range gives no candidate (aioice logs it)"
    finally:
        for connection in connections:
            await connection.close()


async def test_without_a_range_aioice_binds_as_before() -> None:
    install_patches()
    connection = aioice.Connection(ice_controlling=True)
    try:
        with offering_host_addresses(("127.0.0.1",)):
            await connection.gather_candidates()
        assert [c.port > 0 for c in connection.local_candidates] == [True]
        # Outside a range aioice gets the running loop itself.
        assert aioice.ice.asyncio.get_running_loop() is asyncio.get_running_loop()
    finally:
        await connection.close()

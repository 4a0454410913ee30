"""Opus in-band FEC (realtime.patches): asked for where the offer asks, and really made.

Whether a packet carries FEC (LBRR data) is read with libopus's own ``opus_packet_has_lbrr``
(the libopus PyAV ships, else the system's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from realtime.offer import read_offer
from realtime.patches import FecOpusEncoder, install_patches
from tests.support.media import speechlike


def _libopus() -> ctypes.CDLL:
    bundled = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libopus*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library("opus")
    if name is None:
        pytest.skip("no libopus to read packets with")
    lib = ctypes.CDLL(name)
    if not hasattr(lib, "opus_packet_has_lbrr"):
        pytest.skip("libopus older than 1.5")
    lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    return lib


def encode_speech(encoder: object) -> list[bytes]:
    audio = speechlike(2.0, seed=4)
    pcm = (audio * 32767).astype(np.int16)
    packets: list[bytes] = []
    for i in range(0, pcm.size - 960, 960):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 960].reshape(1, -1), "s16", "mono")
        frame.sample_rate = 48_000
        frame.pts = i
        frame.time_base = Fraction(1, 48_000)
        packets += encoder.encode(frame)[0]  # type: ignore[attr-defined]
    return packets


def opus(**parameters: int) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111, parameters=parameters
    )


def test_the_encoder_for_a_codec_that_asks_for_fec_makes_it() -> None:
    install_patches()
    lib = _libopus()
    from aiortc import rtcrtpsender

    asked = rtcrtpsender.get_encoder(opus(useinbandfec=1))  # type: ignore[attr-defined]
    plain = rtcrtpsender.get_encoder(opus())  # type: ignore[attr-defined]
    assert isinstance(asked, FecOpusEncoder)
    assert not isinstance(plain, FecOpusEncoder)
    with_fec = [lib.opus_packet_has_lbrr(p, len(p)) for p in encode_speech(asked)]
    without = [lib.opus_packet_has_lbrr(p, len(p)) for p in encode_speech(plain)]
    assert sum(with_fec) > len(with_fec) / 2  # voiced frames carry the previous one again
    assert sum(without) == 0
    assert sum(lib.opus_packet_has_lbrr(p, len(p)) for p in encode_speech(get_encoder(opus()))) == 0


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n{fmtp}a=rtpmap:0 PCMU/8000\r\n"
)


@pytest.mark.parametrize(
    ("fmtp", "fec"),
    [
        ("a=fmtp:111 minptime=10;useinbandfec=1\r\n", True),
        ("a=fmtp:111 minptime=10; useinbandfec=1\r\n", True),
        ("a=fmtp:111 minptime=10;useinbandfec=0\r\n", False),
        ("a=fmtp:0 useinbandfec=1\r\n", False),  # not Opus's
        ("", False),
    ],
)
def test_the_offer_asks_for_fec_only_in_opus_fmtp(fmtp: str, fec: bool) -> None:
    assert read_offer(OFFER.format(fmtp=fmtp)).opus_fec is fec

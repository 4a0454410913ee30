"""The Opus decoder that repairs lost packets (realtime.opus_decoder), against aiortc's own."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from numpy.typing import NDArray

from realtime.audio import InboundAudio
from realtime.opus_decoder import NotedFrame, RepairingOpusDecoder, libopus
from realtime.patches import FecOpusEncoder
from tests.support.media import speechlike

FRAME = 960
LOST = set(range(7, 150, 5))
"""Every fifth packet (20 %), one at a time."""


def packets(encoder: OpusEncoder) -> list[bytes]:
    pcm = (speechlike(3.0, seed=6) * 32767).astype(np.int16)
    out: list[bytes] = []
    for i in range(0, pcm.size - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + FRAME].reshape(1, -1), "s16", "mono")
        frame.sample_rate = 48_000
        frame.pts = i
        frame.time_base = Fraction(1, 48_000)
        out += encoder.encode(frame)[0]
    return out


def mono(frames: list[av.AudioFrame]) -> tuple[NDArray[np.float32], list[int]]:
    audio = [f.to_ndarray().reshape(-1, 2).mean(axis=1) / 32768 for f in frames]
    return np.concatenate(audio).astype(np.float32), [int(f.pts or 0) for f in frames]


def decode(decoder: object, sent: list[bytes], lost: set[int]) -> NDArray[np.float32]:
    """The stream as the inbound path builds it: a lost packet not repaired is silence."""
    out = np.zeros(len(sent) * FRAME, dtype=np.float32)
    pending = 0
    for i, data in enumerate(sent):
        if i in lost:
            pending += 1
            continue
        frame = NotedFrame(data, i * FRAME, pending)
        pending = 0
        audio, starts = mono(decoder.decode(frame))  # type: ignore[attr-defined]
        at = 0
        for start in starts:
            out[start : start + FRAME] = audio[at : at + FRAME]
            at += FRAME
    return out


def slots(audio: NDArray[np.float32], which: set[int]) -> NDArray[np.float32]:
    return np.concatenate([audio[i * FRAME : (i + 1) * FRAME] for i in sorted(which)])


def error(got: NDArray[np.float32], clean: NDArray[np.float32]) -> float:
    """Energy of the difference in the lost slots, relative to the clean signal's there."""
    a, b = slots(got, LOST), slots(clean, LOST)
    return float(np.sum((a - b) ** 2) / np.sum(b**2))


@pytest.fixture
def lib() -> object:
    found = libopus()
    if found is None:
        pytest.skip("no libopus to load")
    return found


def test_lost_packets_are_rebuilt_from_fec_better_than_concealed(lib: object) -> None:
    with_fec = packets(FecOpusEncoder())
    plain = packets(OpusEncoder())
    clean = decode(RepairingOpusDecoder(lib), with_fec, set())
    stock = decode(OpusDecoder(), with_fec, LOST)  # aiortc's: holes of silence
    from_fec = decode(RepairingOpusDecoder(lib), with_fec, LOST)
    concealed = decode(RepairingOpusDecoder(lib), plain, LOST)
    clean_plain = decode(RepairingOpusDecoder(lib), plain, set())
    # With nothing lost it decodes exactly as aiortc's decoder does.
    assert np.array_equal(decode(OpusDecoder(), with_fec, set()), clean)
    assert float(np.abs(slots(stock, LOST)).max()) == 0.0
    assert error(stock, clean) == pytest.approx(1.0)
    # FEC rebuilds a lost packet closely; concealment only guesses it.
    assert error(from_fec, clean) < 0.2
    assert error(concealed, clean_plain) > 2 * error(from_fec, clean)
    # Outside the lost slots nothing changes much (the decoder state carries on).
    kept = set(range(len(with_fec))) - LOST - {i + 1 for i in LOST}
    assert float(np.abs(slots(from_fec, kept) - slots(clean, kept)).max()) < 0.05


def test_repaired_frames_carry_the_lost_packets_media_time(lib: object) -> None:
    sent = packets(FecOpusEncoder())
    decoder = RepairingOpusDecoder(lib)
    decoder.decode(NotedFrame(sent[0], 0, 0))
    frames = decoder.decode(NotedFrame(sent[3], 3 * FRAME, 2))
    assert [f.pts for f in frames] == [FRAME, 2 * FRAME, 3 * FRAME]
    assert decoder.repaired == 2
    # A hole longer than it repairs is left as it is, and a frame without a note is decoded.
    assert [f.pts for f in decoder.decode(NotedFrame(sent[10], 10 * FRAME, 6))] == [10 * FRAME]
    assert len(decoder.decode(JitterFrame(sent[11], 11 * FRAME))) == 1


def test_inbound_counts_repaired_packets_as_lost() -> None:
    inbound = InboundAudio()

    def frame(pts: int) -> av.AudioFrame:
        f = av.AudioFrame.from_ndarray(np.zeros((1, 2 * FRAME), np.int16), "s16", "stereo")
        f.sample_rate, f.pts, f.time_base = 48_000, pts, Fraction(1, 48_000)
        return f

    inbound.convert(frame(0), 0.02, 0)
    inbound.convert(frame(FRAME), 0.0)  # repaired, with no note of its own
    converted = inbound.convert(frame(2 * FRAME), 0.04, lost_packets=1)
    assert converted.gap == 0 and converted.missing == 0
    assert inbound.gap_samples == inbound.repaired_samples == 320  # 20 ms at 16 kHz
    converted = inbound.convert(frame(5 * FRAME), 0.06, lost_packets=2)  # not repaired
    assert converted.gap == converted.missing == 640
    assert inbound.gap_samples == 960 and inbound.repaired_samples == 320

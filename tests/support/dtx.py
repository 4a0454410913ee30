"""A client sender with Opus DTX, as libwebrtc sends it (for tests and benchmarks).

libwebrtc with DTX on: after about 200 ms of silence the encoder enters DTX; the first DTX
frame (a bare TOC byte, 1-2 bytes) is sent so that the receiver knows, later ones are not sent
at all (sequence numbers stay contiguous, the RTP timestamp jumps); every 400 ms a comfort
noise update frame goes out, followed again by one DTX frame.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
from aiortc import RTCRtpSender
from aiortc.codecs.opus import OpusEncoder

FRAMES_BEFORE_DTX = 10
UPDATE_EVERY_FRAMES = 20


class DtxOpusEncoder(OpusEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.silent_frames = 0
        self.in_dtx = False
        self.sent = 0
        self.skipped = 0

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        silent = not np.any(frame.to_ndarray()) if isinstance(frame, av.AudioFrame) else False
        payloads, timestamp = super().encode(frame, force_keyframe)
        if not payloads:
            return payloads, timestamp
        if not silent:
            self.silent_frames = 0
            self.in_dtx = False
            return self._send(payloads, timestamp)
        self.silent_frames += 1
        if self.silent_frames <= FRAMES_BEFORE_DTX:
            return self._send(payloads, timestamp)
        if (self.silent_frames - FRAMES_BEFORE_DTX) % UPDATE_EVERY_FRAMES == 0:
            self.in_dtx = False  # a comfort noise update
            return self._send(payloads, timestamp)
        if not self.in_dtx:
            self.in_dtx = True
            return self._send([payloads[0][:1]], timestamp)
        self.skipped += 1
        return [], timestamp

    def _send(self, payloads: list[bytes], timestamp: int) -> tuple[list[bytes], int]:
        self.sent += len(payloads)
        return payloads, timestamp


def use_dtx(sender: RTCRtpSender) -> DtxOpusEncoder:
    """Make ``sender`` (before it starts) encode Opus with DTX."""
    encoder = DtxOpusEncoder()
    attribute = "_RTCRtpSender__encoder"
    if not hasattr(sender, attribute):
        raise RuntimeError("aiortc's sender has no encoder where expected: check the pin")
    setattr(sender, attribute, encoder)
    return encoder

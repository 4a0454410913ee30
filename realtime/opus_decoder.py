"""Opus decoding that repairs loss: in-band FEC, then packet loss concealment.

aiortc decodes Opus with FFmpeg's libopus decoder, which is never told that a packet was lost:
the lost 20 ms become silence (a hole in the media clock), and FEC data the sender put in the
next packet is never read.  This decoder calls libopus itself (through ctypes, the libopus
that PyAV ships, else the system's): when the jitter buffer notes that packets were lost just
before this one (``NotedFrame.lost_before``), the last of them is rebuilt from this packet's
FEC data (``decode_fec``; where the sender sent none, libopus conceals it instead) and any
before it are concealed (PLC), then this packet is decoded.  The output is aiortc's: 48 kHz
s16 stereo frames, the repaired ones with the media time of the packets they stand for.

realtime.patches puts it in aiortc's place (``get_decoder``) when libopus can be loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from av.frame import Frame

log = logging.getLogger(__name__)

RATE = 48_000
CHANNELS = 2
MAX_FRAME = 5760
"""The longest Opus packet: 120 ms at 48 kHz."""
MAX_REPAIRED = 5
"""The most lost packets in a row that are repaired (100 ms); a longer hole is left as it is
(silence of the same length, counted as lost)."""
_TIME_BASE = Fraction(1, RATE)


class NotedFrame(JitterFrame):
    """A packet handed to the decoder, with how many packets were lost just before it."""

    def __init__(self, data: bytes, timestamp: int, lost_before: int) -> None:
        super().__init__(data, timestamp)
        self.lost_before = lost_before


@functools.cache
def libopus() -> Any:
    """libopus through ctypes (None when there is none to load)."""
    bundled = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libopus*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library("opus")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        log.warning("libopus could not be loaded (%s): lost audio stays silence", exc)
        return None
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int16),
        ctypes.c_int,
        ctypes.c_int,
    ]
    return lib


class RepairingOpusDecoder(Decoder):
    """One inbound Opus stream's decoder (used by aiortc's decoder thread only)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        error = ctypes.c_int(0)
        self._state = lib.opus_decoder_create(RATE, CHANNELS, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise RuntimeError(f"opus_decoder_create failed ({error.value})")
        self._pcm = (ctypes.c_int16 * (MAX_FRAME * CHANNELS))()
        self._last_samples = 960
        self.repaired = 0
        """Lost packets rebuilt (from FEC data, or concealed)."""

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        data, timestamp = encoded_frame.data, encoded_frame.timestamp
        frames: list[Frame] = []
        lost = getattr(encoded_frame, "lost_before", 0)
        if lost > MAX_REPAIRED:
            lost = 0
        for back in range(lost, 0, -1):
            fec = back == 1  # this packet carries the one just before it
            got = self._lib.opus_decode(
                self._state,
                data if fec else None,
                len(data) if fec else 0,
                self._pcm,
                self._last_samples,
                1 if fec else 0,
            )
            if got > 0:
                self.repaired += 1
                frames.append(self._frame(got, timestamp - back * self._last_samples))
        got = self._lib.opus_decode(self._state, data, len(data), self._pcm, MAX_FRAME, 0)
        if got < 0:
            raise av.InvalidDataError(-1, f"opus_decode failed ({got})")
        self._last_samples = got
        frames.append(self._frame(got, timestamp))
        return frames

    def _frame(self, samples: int, pts: int) -> av.AudioFrame:
        pcm = np.ctypeslib.as_array(self._pcm)[: samples * CHANNELS].copy()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = _TIME_BASE
        return frame

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)

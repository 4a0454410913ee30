"""Paces the outbound speech in 20 ms frames against an absolute monotonic schedule.

Frame k is due at ``start + k * 20 ms``.  The pacer sleeps until a frame is due, then hands
over 20 ms from the playout buffer, or silence when it is empty.  When it wakes up late (the
event loop was busy, the sender stalled) by more than ``max_lag``, it does not burst the
backlog out: it moves the schedule forward to now and drops the speech that would have played
in the skipped frames, so a stall never turns into lasting delay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import av
import numpy as np
from numpy.typing import NDArray

from realtime.audio import pcm_frame
from realtime.clock import Clock
from realtime.playout import PlayoutBuffer

FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class OutFrame:
    pts: int
    """Position in samples since the track started."""
    samples: NDArray[np.int16]
    speech: bool
    """False when the frame is silence because nothing was queued."""


class OutboundPacer:
    def __init__(self, playout: PlayoutBuffer, clock: Clock, max_lag_ms: int) -> None:
        self._playout = playout
        self._clock = clock
        self._max_lag = max_lag_ms / 1000
        self._frame_samples = playout.rate * FRAME_MS // 1000
        self._start: float | None = None
        self._k = 0
        self.skipped_frames = 0
        self.frames = 0
        self.lateness_ms: deque[float] = deque(maxlen=500)
        """How late each recent frame was handed over (ms after its due time)."""

    def reset_schedule(self) -> None:
        """Start a new schedule at the next frame (e.g. after the track was idle)."""
        self._start = None

    async def next_frame(self) -> OutFrame:
        now = self._clock.now()
        if self._start is None:
            self._start = now - self._k * FRAME_MS / 1000
        due = self._start + self._k * FRAME_MS / 1000
        if now < due:
            await self._clock.sleep_until(due)
            now = self._clock.now()
        elif now - due > self._max_lag:
            # (+1e-9: a stall of exactly n frames must skip n, despite float rounding)
            skip = int((now - due) / (FRAME_MS / 1000) + 1e-9)
            self._k += skip
            self.skipped_frames += skip
            self._playout.drop(skip * self._frame_samples)
            due = self._start + self._k * FRAME_MS / 1000
        self.lateness_ms.append((now - due) * 1000)
        pulled = self._playout.pull(self._frame_samples)
        frame = OutFrame(
            pts=self._k * self._frame_samples,
            samples=pulled if pulled is not None else np.zeros(self._frame_samples, np.int16),
            speech=pulled is not None,
        )
        self._k += 1
        self.frames += 1
        return frame

    async def next_wire_frame(self) -> av.AudioFrame:
        """The next frame as the outbound track hands it to the encoder (mono s16, pts in
        samples at the playout rate)."""
        frame = await self.next_frame()
        return pcm_frame(frame.samples, frame.pts, self._playout.rate)

"""Cuts the inbound 16 kHz stream into exact 1000 ms units on the call's media clock.

Positions are sample counts.  Samples are appended contiguously (the inbound converter has
already turned lost packets into silence).  A unit is taken either when the stream has passed
its end or when its deadline has passed; in the second case its missing tail is silence and
the same amount of later audio is dropped as late, so later units never shift.

The slicer also estimates when each unit is due on the monotonic clock: the arrival time of
media position 0, tracked as the smallest (arrival - media time) offset of the last seconds,
which follows a sender clock that drifts against ours.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, UNIT_MS, UNIT_SAMPLES, Frame, Unit

_OFFSET_WINDOW_UNITS = 10


class UnitSlicer:
    def __init__(self) -> None:
        self._buf = np.zeros(UNIT_SAMPLES * 4, dtype=np.float32)
        self._open_index = 0
        """Index of the oldest unit not yet taken."""
        self._write = 0
        """Media position of the next appended sample."""
        self._holes: deque[tuple[int, int]] = deque(maxlen=64)
        """Stretches of media (positions) skipped as silence, for ``missing_ms``."""
        self._completed: deque[float] = deque()
        """Arrival times of the units (from the oldest open one) whose last sample is in."""
        self._anchor: float | None = None
        self._offsets: deque[float] = deque(maxlen=_OFFSET_WINDOW_UNITS)
        self._offset_unit = -1
        self._target = UNIT_SAMPLES
        self.anchored = asyncio.Event()
        """Set once the media clock is anchored (first audio, or start())."""
        self.reached = asyncio.Event()
        """Set when the stream has passed the end of the next unit to take."""
        self.late_samples = 0
        """Samples dropped because their unit had already been taken."""

    @property
    def started(self) -> bool:
        return self._anchor is not None

    @property
    def next_index(self) -> int:
        return self._open_index

    @property
    def position(self) -> int:
        return self._write

    def start(self, now: float) -> None:
        """Anchor the clock at ``now`` when no audio has come (units will be silence)."""
        if self._anchor is None:
            self._anchor = now
            self.anchored.set()

    def due_time(self, index: int) -> float:
        """Monotonic time at which unit ``index``'s last sample should have arrived."""
        if self._anchor is None:
            raise RuntimeError("the slicer has not started")
        return self._anchor + (index + 1) * UNIT_MS / 1000

    def locate(self, when: float) -> tuple[int, float] | None:
        """The unit that media arriving at monotonic ``when`` belongs to, and the position
        inside it (0..1); None before the clock is anchored."""
        if self._anchor is None:
            return None
        seconds = (when - self._anchor) * 1000 / UNIT_MS
        index = int(seconds // 1)
        return index, seconds - index

    def append(self, samples: NDArray[np.float32], now: float, gap: int = 0) -> None:
        """Append the next samples of the stream, which arrived at ``now``, after ``gap``
        samples of media that never arrived (silence)."""
        if self._anchor is None:
            self._anchor = now - samples.size / INPUT_RATE
            self.anchored.set()
        elif not self._offsets and samples.size:
            # Anchored by start() before any audio: place this audio at its wall time.
            at_wall = round((now - self._anchor) * INPUT_RATE) - samples.size
            gap = max(gap, at_wall - self._write)
        if gap > 0:
            self._skip(gap)
        start_unit = self._open_index * UNIT_SAMPLES
        if self._write < start_unit:
            late = min(samples.size, start_unit - self._write)
            self.late_samples += late
            self._write += late
            samples = samples[late:]
        if samples.size:
            self._store(samples)
            while self._write >= (self._open_index + len(self._completed) + 1) * UNIT_SAMPLES:
                self._completed.append(now)
            self._track_offset(now)
        if self._write >= self._target:
            self.reached.set()

    def _skip(self, count: int) -> None:
        """Advance over ``count`` samples that never arrived (they stay silent)."""
        self._holes.append((self._write, self._write + count))
        self._write += count
        open_start = self._open_index * UNIT_SAMPLES
        end = max(0, self._write - open_start)
        if end > self._buf.size:
            grown = np.zeros(end, dtype=np.float32)
            grown[: self._buf.size] = self._buf
            self._buf = grown

    def _store(self, samples: NDArray[np.float32]) -> None:
        start = self._write - self._open_index * UNIT_SAMPLES
        end = start + samples.size
        if end > self._buf.size:
            grown = np.zeros(max(end, self._buf.size * 2), dtype=np.float32)
            grown[: self._buf.size] = self._buf
            self._buf = grown
        self._buf[start:end] = samples
        self._write += samples.size

    def _track_offset(self, now: float) -> None:
        offset = now - self._write / INPUT_RATE
        unit = self._write // UNIT_SAMPLES
        if unit != self._offset_unit:
            self._offset_unit = unit
            self._offsets.append(offset)
        elif offset < self._offsets[-1]:
            self._offsets[-1] = offset
        self._anchor = min(self._offsets)

    def take(self, frames: tuple[Frame, ...] = ()) -> Unit:
        """Finalize the oldest open unit (silence where audio is missing)."""
        index = self._open_index
        start = index * UNIT_SAMPLES
        end = start + UNIT_SAMPLES
        have = min(UNIT_SAMPLES, max(0, self._write - start))
        audio = self._buf[:UNIT_SAMPLES].copy()
        audio[have:] = 0.0
        skipped = sum(max(0, min(b, start + have) - max(a, start)) for a, b in self._holes)
        while self._holes and self._holes[0][1] <= end:
            self._holes.popleft()
        unit = Unit(
            index=index,
            start_ms=index * UNIT_MS,
            audio=audio,
            frames=frames,
            captured_at=self._completed.popleft() if self._completed else 0.0,
            missing_ms=(UNIT_SAMPLES - have + skipped) * 1000 // INPUT_RATE,
        )
        remaining = max(0, self._write - start - UNIT_SAMPLES)
        self._buf[:remaining] = self._buf[UNIT_SAMPLES : UNIT_SAMPLES + remaining]
        self._buf[remaining:] = 0.0
        self._open_index += 1
        self._target = (self._open_index + 1) * UNIT_SAMPLES
        if self._write >= self._target:
            self.reached.set()
        else:
            self.reached.clear()
        return unit

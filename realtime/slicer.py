"""Cuts the inbound 16 kHz stream into exact 1000 ms units on the call's media clock.

Positions are sample counts.  Samples are appended contiguously (the inbound converter has
already turned lost packets into silence).  A unit is taken either when the stream has passed
its end or when its deadline has passed; in the second case its missing tail is silence and
the same amount of later audio is dropped as late, so later units never shift.

The slicer also estimates when each unit is due on the monotonic clock: the arrival time of
media position 0 (the anchor).  Each second of media gives one offset, the smallest
(arrival - media time) of its packets; a sender clock that drifts against ours makes these
offsets a line, not a constant (a 2 % slow sender adds 20 ms a second).  The anchor is the
lower envelope of the last seconds' offsets moved along that line to the present, so units
fall due when the sender's media clock says they end, however the clocks drift.

A sender in DTX (Opus discontinuous transmission) sends nothing while it is quiet: a unit
whose tail falls in such a pause is taken at its due time, without waiting, and its tail is
silence, not missing audio.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, UNIT_MS, UNIT_SAMPLES, Frame, PartialUnit, Unit

_OFFSET_WINDOW_UNITS = 10
_MIN_UNITS_FOR_DRIFT = 4
MAX_DRIFT = 0.05
"""Largest clock drift followed, in seconds per second (5 %); more is not a clock."""


@dataclass(frozen=True, slots=True)
class UnitAudio:
    """One unit's audio, cut from the stream; it becomes a ``Unit`` once with its frames."""

    index: int
    audio: NDArray[np.float32]
    """16 kHz mono float32, shape (UNIT_SAMPLES,); silence where media is missing."""
    captured_at: float
    """Monotonic time when the unit's last sample arrived (0.0: it never did)."""
    missing_ms: int
    """How much of the unit is silence because media did not arrive."""

    @property
    def start_ms(self) -> int:
        """Start on the call's media clock (from the sample count, not wall time)."""
        return self.index * UNIT_MS

    def with_frames(self, frames: tuple[Frame, ...]) -> Unit:
        """The engine's unit: this audio and the video frames sampled during it."""
        return Unit(
            index=self.index,
            start_ms=self.start_ms,
            audio=self.audio,
            frames=frames,
            captured_at=self.captured_at,
            missing_ms=self.missing_ms,
        )


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
        self._offsets: deque[tuple[int, float]] = deque(maxlen=_OFFSET_WINDOW_UNITS)
        """(second of media, smallest arrival - media time offset of its samples)."""
        self.drift = 0.0
        """Estimated drift of the sender's clock against ours (s/s; > 0: it runs slow)."""
        self.quiet = False
        """The sender is in DTX: nothing arrives until it talks again."""
        self._target = UNIT_SAMPLES
        self.anchored = asyncio.Event()
        """Set once the media clock is anchored (first audio, or start())."""
        self.reached = asyncio.Event()
        """Set when the stream has passed the end of the next unit to take."""
        self.late_samples = 0
        """Samples dropped because their unit had already been taken."""
        self.missing_samples = 0
        """Samples of taken units that were lost (silence in their place)."""
        self._last_arrival = 0.0

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

    def append(
        self,
        samples: NDArray[np.float32],
        now: float,
        gap: int = 0,
        missing: int | None = None,
        quiet: bool = False,
    ) -> None:
        """Append the next samples of the stream, which arrived at ``now``, after ``gap``
        samples of silence, ``missing`` of which (all by default) were lost rather than left
        out by the sender; ``quiet``: the sender is in DTX after these samples."""
        self.quiet = quiet
        self._last_arrival = now
        lost = gap if missing is None else min(gap, missing)
        if self._anchor is None:
            self._anchor = now - samples.size / INPUT_RATE
            self.anchored.set()
        elif not self._offsets and samples.size:
            # Anchored by start() before any audio: place this audio at its wall time.
            at_wall = round((now - self._anchor) * INPUT_RATE) - samples.size
            if at_wall - self._write > gap:
                lost += at_wall - self._write - gap
                gap = at_wall - self._write
        if gap > 0:
            self._skip(gap, lost)
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

    def _skip(self, count: int, lost: int) -> None:
        """Advance over ``count`` samples of silence, the first ``lost`` of them lost."""
        if lost > 0:
            self._holes.append((self._write, self._write + lost))
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
        unit = (self._write - 1) // UNIT_SAMPLES
        if not self._offsets or unit != self._offsets[-1][0]:
            self._offsets.append((unit, offset))
            self.drift = _drift(self._offsets)
        elif offset < self._offsets[-1][1]:
            self._offsets[-1] = (unit, offset)
        latest = self._offsets[-1][0]
        # Each second's offset, carried to the latest second along the drift; the smallest
        # is the least delayed path through the network.
        self._anchor = min(o + self.drift * (latest - u) for u, o in self._offsets)

    def peek(self) -> PartialUnit | None:
        """What has arrived of the oldest open unit, from its start (a copy); None when
        nothing has, or when all of it has (it is about to be taken)."""
        have = self._write - self._open_index * UNIT_SAMPLES
        if have <= 0 or have >= UNIT_SAMPLES:
            return None
        return PartialUnit(self._open_index, self._buf[:have].copy(), self._last_arrival)

    def take(self) -> UnitAudio:
        """Finalize the oldest open unit (silence where audio is missing)."""
        index = self._open_index
        start = index * UNIT_SAMPLES
        end = start + UNIT_SAMPLES
        have = min(UNIT_SAMPLES, max(0, self._write - start))
        audio = self._buf[:UNIT_SAMPLES].copy()
        audio[have:] = 0.0
        skipped = sum(max(0, min(b, start + have) - max(a, start)) for a, b in self._holes)
        # The tail that has not arrived: lost, unless the sender is quiet (DTX).
        tail = 0 if self.quiet else UNIT_SAMPLES - have
        self.missing_samples += tail + skipped
        while self._holes and self._holes[0][1] <= end:
            self._holes.popleft()
        unit = UnitAudio(
            index=index,
            audio=audio,
            captured_at=self._completed.popleft() if self._completed else 0.0,
            missing_ms=(tail + skipped) * 1000 // INPUT_RATE,
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


def _drift(offsets: deque[tuple[int, float]]) -> float:
    """The slope of the offsets' lower envelope, within +-MAX_DRIFT: from the smallest offset
    of the older half of the seconds to the smallest of the newer half.  Network delay only
    ever adds to an offset, so a stretch of late packets inside either half does not tilt it
    (a least-squares or median slope does)."""
    if len(offsets) < _MIN_UNITS_FOR_DRIFT:
        return 0.0
    seconds = list(offsets)
    half = len(seconds) // 2
    older = min(seconds[:half], key=lambda entry: entry[1])
    newer = min(seconds[half:], key=lambda entry: entry[1])
    span = newer[0] - older[0]
    if span <= 0:
        return 0.0
    return max(-MAX_DRIFT, min(MAX_DRIFT, (newer[1] - older[1]) / span))

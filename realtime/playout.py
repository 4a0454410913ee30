"""The playout buffer between the engine's speech and the paced outbound track.

Bounded in milliseconds: ``push`` waits while the buffer is full, so a fast engine cannot run
ahead of the wire by more than the bound.  ``clear`` (barge-in) empties it at once and makes
any push still waiting give up, so speech from before the interrupt never plays.  The buffer
counts what was really played, dropped as stale, and cleared, and how often speech ran dry
mid-stream (an underrun: the wire went silent for want of speech, and speech came back
within ``UNDERRUN_GAP_MS``; a longer silence is the end of what was being said).
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
from numpy.typing import NDArray

UNDERRUN_GAP_MS = 1000
"""Silence after speech ran dry that still counts as an underrun when speech resumes."""


class PlayoutBuffer:
    def __init__(self, rate: int, max_ms: int) -> None:
        if max_ms <= 0:
            raise ValueError("max_ms must be > 0")
        self.rate = rate
        self.capacity = rate * max_ms // 1000
        self._chunks: deque[NDArray[np.int16]] = deque()
        self._head = 0
        """Samples of the first chunk already consumed."""
        self._level = 0
        self._generation = 0
        self._room = asyncio.Event()
        self._room.set()
        self.played = 0
        self.dropped = 0
        self.cleared = 0
        self.underruns = 0
        self._dry: int | None = None
        """Samples pulled empty since speech ran dry; None when no speech is under way."""
        self._gap = rate * UNDERRUN_GAP_MS // 1000

    @property
    def level(self) -> int:
        """Samples waiting to be played."""
        return self._level

    @property
    def level_ms(self) -> float:
        return self._level * 1000 / self.rate

    async def push(self, samples: NDArray[np.int16]) -> bool:
        """Queue ``samples``, waiting for room; False when a clear() discarded them."""
        generation = self._generation
        offset = 0
        while offset < samples.size:
            while self._level >= self.capacity:
                self._room.clear()
                await self._room.wait()
                if self._generation != generation:
                    return False
            if self._generation != generation:
                return False
            take = min(samples.size - offset, self.capacity - self._level)
            self._chunks.append(samples[offset : offset + take])
            self._level += take
            offset += take
        return True

    def pull(self, count: int) -> NDArray[np.int16] | None:
        """The next ``count`` samples (zero-padded at the end), or None when empty."""
        if self._level == 0:
            if self._dry is not None:
                self._dry += count
                if self._dry >= self._gap:
                    self._dry = None  # a pause this long: that speech had ended
            return None
        if self._dry:
            self.underruns += 1
        self._dry = 0
        out = np.zeros(count, dtype=np.int16)
        filled = self._consume(count, out)
        self.played += filled
        return out

    def drop(self, count: int) -> int:
        """Discard up to ``count`` samples that are too late to play; returns how many."""
        dropped = self._consume(count, None)
        self.dropped += dropped
        return dropped

    def clear(self) -> int:
        """Discard everything (barge-in); returns the samples discarded."""
        discarded = self._level
        self._chunks.clear()
        self._head = 0
        self._level = 0
        self._generation += 1
        self._dry = None
        self.cleared += discarded
        self._room.set()
        return discarded

    def _consume(self, count: int, out: NDArray[np.int16] | None) -> int:
        done = 0
        while done < count and self._chunks:
            chunk = self._chunks[0]
            take = min(count - done, chunk.size - self._head)
            if out is not None:
                out[done : done + take] = chunk[self._head : self._head + take]
            done += take
            self._head += take
            if self._head == chunk.size:
                self._chunks.popleft()
                self._head = 0
        self._level -= done
        if done:
            self._room.set()
        return done

"""Inbound media: drains the remote tracks into the slicer, the VAD and the video sampler.

The readers always drain their track, whatever the rest of the call is doing, so nothing
queues up inside aiortc; everything they hand on goes into bounded structures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import av

from omni.api import UNIT_MS, Frame
from realtime.audio import Converted, InboundAudio, ReceivedAudio, video_to_rgb
from realtime.clock import Clock
from realtime.slicer import UnitSlicer

AudioSink = Callable[[Converted, float], None]
"""Receives converted audio (with the silence that comes before it) and its arrival time."""


async def pump_audio(
    frames: AsyncIterator[ReceivedAudio],
    clock: Clock,
    sink: AudioSink,
    converter: InboundAudio | None = None,
) -> None:
    """Convert every inbound audio frame to 16 kHz mono and hand it to ``sink``."""
    converter = converter or InboundAudio()
    previous: float | None = None
    async for received in frames:
        now = clock.now()
        converted = converter.convert(
            received.frame,
            now - previous if previous is not None else 0.0,
            lost_packets=received.lost_packets,
            dtx=received.dtx,
        )
        previous = now
        if converted.samples.size or converted.gap or converted.quiet:
            sink(converted, now)


@dataclass(frozen=True, slots=True)
class RawFrame:
    """A decoded video frame picked for a unit; converted to RGB on the engine's thread."""

    frame: av.VideoFrame
    offset_ms: int

    def to_frame(self, max_side: int) -> Frame:
        return Frame(rgb=video_to_rgb(self.frame, max_side), offset_ms=self.offset_ms)


class VideoSampler:
    """Keeps, for each unit, the latest frame of each of its ``per_unit`` equal slots.

    At most two units' worth of frames are held, whatever the camera's frame rate.
    """

    def __init__(self, slicer: UnitSlicer, per_unit: int) -> None:
        self._slicer = slicer
        self._per_unit = per_unit
        self._slots: dict[tuple[int, int], RawFrame] = {}
        self.received = 0

    def add(self, frame: av.VideoFrame, now: float) -> None:
        self.received += 1
        if self._per_unit == 0:
            return
        where = self._slicer.locate(now)
        if where is None:
            return
        index, fraction = where
        if index < self._slicer.next_index:
            return
        slot = min(self._per_unit - 1, int(fraction * self._per_unit))
        self._slots[(index, slot)] = RawFrame(frame, round(fraction * UNIT_MS))
        if len(self._slots) > 2 * self._per_unit:
            oldest = min(self._slots)
            del self._slots[oldest]

    def pick(self, index: int) -> Sequence[RawFrame]:
        picked = [self._slots.pop(key) for key in sorted(k for k in self._slots if k[0] == index)]
        for key in [k for k in self._slots if k[0] < index]:
            del self._slots[key]
        return picked


async def pump_video(
    frames: AsyncIterator[av.VideoFrame], clock: Clock, sampler: VideoSampler
) -> None:
    async for frame in frames:
        sampler.add(frame, clock.now())

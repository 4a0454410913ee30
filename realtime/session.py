"""One call: its peer, media pipeline, engine side and events, as one TaskGroup.

``Call.negotiate`` answers the offer; ``Call.run`` runs every task of the call until it ends
(hang-up, DELETE, a vanished client, a failed connection, an engine that keeps failing) and
then tears everything down along one path: tasks cancelled, goodbye event, peer closed,
engine session closed on its own thread.

Data flow: inbound audio -> ``InboundAudio`` (16 kHz) -> the slicer and the VAD; video ->
``VideoSampler``; the ``UnitLoop`` cuts units and steps the engine binding it owns; the
``Responder`` turns results into events and speech in the ``PlayoutBuffer``, which the
``OutboundPacer`` plays out in 20 ms frames.  The call only wires these together and decides
when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import Any

import numpy as np

from omni.api import INPUT_RATE, OUTPUT_RATE, UNIT_MS, EngineSource
from omni.errors import EngineError
from realtime.audio import WIRE_RATE, Converted, InboundAudio
from realtime.clock import Clock
from realtime.config import CallConfig, PeerConfig
from realtime.errors import CallError, describe
from realtime.events import (
    ErrorEvent,
    EventChannel,
    Ping,
    Pong,
    ProtocolError,
    ResponseCancel,
    SessionClosed,
    SessionCreated,
    SessionQueued,
    SessionQueueDone,
    SpeechStarted,
    SpeechStopped,
    parse_client_event,
)
from realtime.figures import snapshot
from realtime.inbound import VideoSampler, pump_audio, pump_video
from realtime.outbound import OutboundPacer
from realtime.peer import EventsChannel, FrameRelay, Peer
from realtime.playout import PlayoutBuffer
from realtime.recording import CallRecorder
from realtime.responder import Responder
from realtime.slicer import UnitSlicer
from realtime.unit_loop import UnitLoop
from realtime.vad import SpeechDetector, SpeechEdge

log = logging.getLogger(__name__)

EARLY_WINDOW_MS = 3000
"""Early steps stop once a pause is this long (ms): a reply would have started by then."""

_WATCH_INTERVAL_S = 0.25


class CallMode(StrEnum):
    ENGINE = "engine"
    LOOPBACK = "loopback"


class CallState(StrEnum):
    CONNECTING = "connecting"
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


class _CallEnded(Exception):
    pass


class Call:
    def __init__(
        self,
        call_id: str,
        mode: CallMode,
        *,
        engine_name: str,
        config: CallConfig,
        peer_config: PeerConfig,
        clock: Clock,
    ) -> None:
        self.call_id = call_id
        self.mode = mode
        self.engine_name = engine_name
        self.config = config
        self._ending = False
        self.end_reason: str | None = None
        self._clock = clock
        self._connect_timeout = peer_config.connect_timeout_s
        self.created_at = clock.now()
        self.peer = Peer(peer_config, clock.now)
        self.events = EventChannel()
        self.playout = PlayoutBuffer(WIRE_RATE, config.playout_max_ms)
        self.pacer = OutboundPacer(self.playout, clock, config.outbound_max_lag_ms)
        self.relay = FrameRelay()
        self.slicer = UnitSlicer()
        self.video = VideoSampler(self.slicer, config.video_frames_per_unit)
        self.vad = SpeechDetector(config.vad)
        self.inbound = InboundAudio()
        self.responder = Responder(self.events, self.playout, config.barge_in_ms)
        self.recorder: CallRecorder | None = None
        """Set (before ``run``) when the call is recorded (realtime.recording)."""
        self._source: EngineSource | None = None
        self.queued = False
        """Whether the call had to wait for a free replica."""
        self._stop = asyncio.Event()
        self.finished = asyncio.Event()
        """Set once the call has ended and freed everything."""
        self.speech_segments = 0
        self.audio_in_ms = 0.0
        self.loop = UnitLoop(
            self.slicer,
            clock,
            self.responder,
            grace_ms=config.unit_grace_ms,
            max_consecutive_errors=config.max_engine_errors,
            step_timeout_s=config.step_timeout_s,
            max_pending=config.max_pending_units,
            frames=self.video,
            early_every_ms=config.early_every_ms,
        )
        self._early_pause_ms = config.early_pause_ms
        self.peer.on_channel = self._on_channel
        self.peer.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def engine_label(self) -> str:
        """The engine that answers, or ``loopback``."""
        return self.engine_name if self.mode is CallMode.ENGINE else "loopback"

    @property
    def state(self) -> CallState:
        if self.finished.is_set():
            return CallState.ENDED
        if self._ending:
            return CallState.ENDING
        return CallState.ACTIVE if self.peer.connected.is_set() else CallState.CONNECTING

    async def negotiate(self, offer_sdp: str) -> str:
        loopback = self.mode is CallMode.LOOPBACK
        source = self.relay.next_frame if loopback else self._next_out_frame
        return await self.peer.answer(offer_sdp, source)

    def stop(self, reason: str) -> None:
        """Ask the call to end (idempotent; the first reason wins)."""
        if self.end_reason is None:
            self.end_reason = reason
        self._stop.set()

    async def run(self, engine: EngineSource | None) -> str:
        """Run the call until it ends; returns why it ended."""
        self._source = engine
        self.events.send(
            SessionCreated(
                call_id=self.call_id,
                engine=self.engine_label,
                mode=self.mode.value,
                unit_ms=UNIT_MS,
                input_rate=INPUT_RATE,
                output_rate=OUTPUT_RATE,
            )
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(), name=f"{self.call_id}:watch")
                tasks.create_task(self._read_audio(), name=f"{self.call_id}:audio-in")
                # Video is drained from the start (frames are dropped until units run).
                tasks.create_task(
                    pump_video(self.peer.video_frames(), self._clock, self.video),
                    name=f"{self.call_id}:video-in",
                )
                if self.mode is CallMode.ENGINE and engine is not None:
                    tasks.create_task(self._run_engine(engine), name=f"{self.call_id}:engine")
        except* _CallEnded:
            pass
        except* Exception as group:
            failure = describe(group)
            if not failure.expected:
                log.error("call %s failed", self.call_id, exc_info=group)
            self.stop(failure.code)
            self.events.send(ErrorEvent(failure.code, failure.message))
        finally:
            await self._teardown()
        return self.end_reason or "ended"

    async def _teardown(self) -> None:
        self._ending = True
        self.stop(self.end_reason or "ended")
        self.events.send(SessionClosed(reason=self.end_reason or "ended"))
        # If the channel never opened (an error right at the start), give it a moment to,
        # so the client learns why its call ended.
        await self.events.drain(self._clock, timeout_s=0.2, open_timeout_s=2.0)
        try:
            await self.peer.close()
        finally:
            if self.recorder is not None:  # recording: finish the files
                await self.recorder.close()
            if self._source is not None:
                try:
                    await self._source.close(
                        self.loop.binding, self.loop.broken, hung=self.loop.hung
                    )
                except Exception:
                    log.exception("engine session of call %s failed to close", self.call_id)
            self.finished.set()
            log.info(
                "call ended",
                extra={
                    "call_id": self.call_id,
                    "reason": self.end_reason,
                    "units": self.loop.steps,
                },
            )

    async def _run_engine(self, source: EngineSource) -> None:
        """Get an engine session (waiting in the queue if need be), then run the unit loop."""
        try:
            binding = await source.open(self._on_queue)
        except (CallError, EngineError) as exc:
            self.events.send(ErrorEvent(exc.code, str(exc)))
            self.stop(exc.code)
            raise _CallEnded from None
        self.responder.attach(binding.session)
        if self.queued:
            self.events.send(SessionQueueDone(waited_s=round(binding.waited_s, 2)))
        await self.loop.run(binding)

    def _on_queue(self, position: int, estimated_wait_s: float, queue_length: int) -> None:
        self.queued = True
        self.events.send(SessionQueued(position, estimated_wait_s, queue_length))

    async def _watch(self) -> None:
        """Ends the call on a stop request, a dead connection or a silent client."""
        connect_deadline = self.created_at + self._connect_timeout
        max_end = (
            self.created_at + self.config.max_duration_s if self.config.max_duration_s else None
        )
        while True:
            if self._stop.is_set():
                raise _CallEnded
            now = self._clock.now()
            if self.peer.ended.is_set():
                self.stop("connection_closed")
            elif not self.peer.connected.is_set():
                if now > connect_deadline:
                    self.stop("connect_timeout")
            elif now - self.peer.last_activity > self.config.idle_timeout_s:
                self.stop("client_gone")
            if max_end is not None and now > max_end:
                self.stop("max_duration")
            if not self._stop.is_set():
                await self._clock.wait_until(self._stop, now + _WATCH_INTERVAL_S)

    # ------------------------------------------------------------ inbound

    async def _read_audio(self) -> None:
        if self.mode is CallMode.LOOPBACK:
            async for received in self.peer.audio_frames():
                self.relay.put(received.frame)
            return
        await pump_audio(self.peer.audio_frames(), self._clock, self._on_audio, self.inbound)

    def _on_audio(self, converted: Converted, now: float) -> None:
        samples, gap = converted.samples, converted.gap
        self.audio_in_ms += samples.size * 1000 / INPUT_RATE
        if self.recorder is not None:  # recording: what the service heard
            self.recorder.heard(samples, gap)
        if self.loop.binding is not None:
            # Units start with the engine session (not while the call waits in the queue).
            self.slicer.append(samples, now, gap, converted.missing, converted.quiet)
        voiced_before = self.vad.voiced_total_ms
        events = self.vad.feed(np.zeros(min(gap, INPUT_RATE), dtype=np.float32)) if gap else []
        events += self.vad.feed(samples)
        for event in events:
            if event.edge is SpeechEdge.STARTED:
                self.speech_segments += 1
                self.responder.speech_started()
                self.events.send(SpeechStarted(at_ms=event.at_ms))
            else:
                self.events.send(SpeechStopped(at_ms=event.at_ms))
        if self.vad.speaking:
            self.responder.voice(self.vad.voiced_total_ms - voiced_before)
        pause = self.vad.since_speech_ms
        if (
            pause is not None
            and self._early_pause_ms <= pause <= EARLY_WINDOW_MS
            and not self.responder.speaking
        ):
            # The person is pausing, maybe at the end of a turn: an engine that can hears
            # the unit so far (and may answer in it) until it speaks or the pause grows long.
            self.loop.want_early()

    async def _next_out_frame(self) -> Any:
        frame = await self.pacer.next_wire_frame()
        if self.recorder is not None:  # recording: what the service said
            self.recorder.said(frame.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        return frame

    # ------------------------------------------------------------ events

    def _on_channel(self, port: EventsChannel) -> None:
        self.events.attach(port)

    def _on_message(self, raw: str | bytes) -> None:
        try:
            event = parse_client_event(raw)
        except ProtocolError as exc:
            self.events.send(ErrorEvent(exc.code, exc.message))
            return
        except Exception as exc:
            log.warning("unreadable client message: %s", exc)
            self.events.send(ErrorEvent("invalid_event", "the message could not be read"))
            return
        if isinstance(event, Ping):
            self.events.send(Pong(id=event.id, t=event.t))
        elif isinstance(event, ResponseCancel):
            self.responder.interrupt("client_cancel")

    # ------------------------------------------------------------ figures

    @property
    def interrupts(self) -> int:
        return self.responder.interrupts

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self)

"""One MiniCPM-o Realtime V1 WebSocket session: a call whose media comes in ``input.append``.

The session runs the same machinery as a WebRTC call (``realtime.session.Call``): the
``UnitSlicer`` cuts the 16 kHz stream into 1000 ms units on the media clock, the ``UnitLoop``
steps the engine session it got from the replica pool (units built on the replica's thread,
same fault and overrun policy), and a ``StepSink`` turns each result into events.  What
differs is the transport: audio arrives as base64 float32 in ``input.append`` frames (one
second each; the client paces them), JPEG frames come with it, and results leave as the
protocol's events (``response.output_audio.delta`` with base64 float32 24 kHz speech, one per
unit) instead of RTP.  No aiohttp here: the signaling handler feeds ``receive`` and drains
``outbox``.

Lifecycle (matching the official ``openbmb-realtime`` client): the client connects; the server
claims a replica (``session.queued`` while it waits, then always ``session.queue_done``); the
client then sends ``session.init``; the server opens the engine session with its prompt and
voice and answers ``session.created``; media flows until ``session.close``, a vanished client,
the session length limit, idleness, or an engine that keeps failing; ``session.closed`` ends it.

Bounds: the client may run at most ``max_ahead_s`` ahead of the wall clock (the server stops
reading until it is back in time: TCP pushes back, nothing queues up here); one append carries
at most ``MAX_APPEND_S`` of audio and ``MAX_FRAMES_PER_APPEND`` frames (``realtime.ws_wire``,
which parses every frame); a client that does not read its events (``MAX_OUTBOX`` waiting) is
ended; a bad frame gets an ``error`` event and the session goes on.  Results become events in
``realtime.ws_responder``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import av

from omni.api import (
    INPUT_RATE,
    OUTPUT_RATE,
    UNIT_MS,
    UNIT_SAMPLES,
    EngineBinding,
    EngineSource,
    Frame,
    QueueCallback,
    SessionConfig,
    require,
)
from omni.errors import EngineError
from realtime.audio import video_to_rgb
from realtime.clock import Clock
from realtime.config import CallConfig
from realtime.errors import CallError, InvalidVoice, describe
from realtime.slicer import UnitSlicer
from realtime.unit_loop import UnitLoop
from realtime.ws_responder import WsResponder
from realtime.ws_wire import (
    Append,
    ClientError,
    ClientFrame,
    Close,
    Init,
    decode_reference,
    error_event,
    event,
    parse_frame,
)

log = logging.getLogger(__name__)

MAX_OUTBOX = 64
"""Events waiting for a client that does not read them; past this the session ends."""
_PARSE_ON_LOOP_BYTES = 256 * 1024
_WATCH_INTERVAL_S = 0.25
_REALIGN_S = 0.3
"""A client this far behind the media clock paused: its next audio starts at the wall clock."""


@dataclass(frozen=True, slots=True)
class WsConfig:
    """Settings of the ``/v1/realtime`` WebSocket sessions."""

    max_message_bytes: int = 8 * 1024 * 1024
    """Largest client message (a voice reference clip or a JPEG frame, base64)."""
    max_audio_session_s: float = 600.0
    """Longest audio session (upstream caps it at 10 minutes)."""
    max_video_session_s: float = 300.0
    """Longest video session (upstream caps it at 5 minutes)."""
    max_ahead_s: float = 2.0
    """How far a client's audio may run ahead of the wall clock before the server paces it."""
    init_timeout_s: float = 15.0
    """Time the client has to send ``session.init`` once it has a replica."""
    idle_timeout_s: float = 60.0
    """End a session whose client sent nothing for this long (upstream's pause timeout)."""

    def __post_init__(self) -> None:
        require(
            64 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024,
            "max_message_bytes must be 64 KiB..64 MiB",
        )
        require(self.max_audio_session_s > 0, "max_audio_session_s must be > 0")
        require(self.max_video_session_s > 0, "max_video_session_s must be > 0")
        require(0.5 <= self.max_ahead_s <= 30, "max_ahead_s must be 0.5..30")
        require(0.5 <= self.init_timeout_s <= 600, "init_timeout_s must be 0.5..600")
        require(1 <= self.idle_timeout_s <= 3600, "idle_timeout_s must be 1..3600")


class Lending(Protocol):
    """A claim on a replica whose session settings come later (with ``session.init``)."""

    @property
    def queued(self) -> bool:
        """Whether the claim waits in the queue (no replica was free at admission)."""
        ...

    async def wait(self, on_queue: QueueCallback) -> None:
        """Until the replica is this session's (told its place in the queue meanwhile)."""
        ...

    def source(self, config: SessionConfig) -> EngineSource:
        """The engine source for the claimed replica, with the session's settings."""
        ...

    def cancel(self) -> None:
        """Give the claim back (only when no source was made)."""
        ...


class _Ended(Exception):
    pass


class Outbox:
    """Events for the client, in order; bounded (``put`` returns False when full)."""

    def __init__(self, limit: int = MAX_OUTBOX) -> None:
        self._items: deque[str] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, text: str) -> bool:
        if self._closed:
            return True
        if len(self._items) >= self._limit:
            return False
        self._items.append(text)
        self._ready.set()
        return True

    def close(self, last: str) -> None:
        """Queue ``last`` (whatever the limit) and end the stream after it."""
        if not self._closed:
            self._items.append(last)
            self._closed = True
            self._ready.set()

    async def get(self) -> str | None:
        """The next event; None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


# ------------------------------------------------------------------ video


@dataclass(frozen=True, slots=True)
class JpegFrame:
    """A JPEG picked for a unit; decoded on the replica's thread."""

    data: bytes
    offset_ms: int

    def to_frame(self, max_side: int) -> Frame:
        codec = av.CodecContext.create("mjpeg", "r")
        try:
            decoded = codec.decode(av.Packet(self.data)) + codec.decode(None)
        except (av.FFmpegError, ValueError) as exc:
            raise EngineError(f"a video frame could not be decoded: {exc}") from None
        if not decoded:
            raise EngineError("a video frame could not be decoded")
        frame = decoded[0]
        assert isinstance(frame, av.VideoFrame)
        return Frame(rgb=video_to_rgb(frame, max_side), offset_ms=self.offset_ms)


class JpegFrames:
    """The JPEGs of each unit (the latest ``per_unit`` of them), for the unit loop."""

    def __init__(self, per_unit: int) -> None:
        self._per_unit = per_unit
        self._units: dict[int, deque[JpegFrame]] = {}

    def add(self, index: int, frames: Sequence[bytes], offset_ms: int, oldest: int) -> None:
        if self._per_unit == 0 or not frames:
            return
        kept = self._units.setdefault(index, deque(maxlen=self._per_unit))
        kept.extend(JpegFrame(f, offset_ms) for f in frames)
        for key in [k for k in self._units if k < oldest]:
            del self._units[key]

    def pick(self, index: int) -> Sequence[JpegFrame]:
        picked = tuple(self._units.pop(index, ()))
        for key in [k for k in self._units if k < index]:
            del self._units[key]
        return picked


# ------------------------------------------------------------------ the session


class WsSession:
    def __init__(
        self,
        session_id: str,
        mode: str,
        *,
        engine_name: str,
        call_config: CallConfig,
        config: WsConfig,
        clock: Clock,
    ) -> None:
        self.session_id = session_id
        self.mode = mode
        self.engine_name = engine_name
        self._config = config
        self._clock = clock
        self.outbox = Outbox()
        self.slicer = UnitSlicer()
        self.frames = JpegFrames(call_config.video_frames_per_unit if mode == "video" else 0)
        self.responder = WsResponder(self._put)
        self.loop = UnitLoop(
            self.slicer,
            clock,
            self.responder,
            grace_ms=call_config.unit_grace_ms,
            max_consecutive_errors=call_config.max_engine_errors,
            step_timeout_s=call_config.step_timeout_s,
            max_pending=call_config.max_pending_units,
            frames=self.frames,
        )
        self.max_duration_s = (
            config.max_video_session_s if mode == "video" else config.max_audio_session_s
        )
        self.end_reason: str | None = None
        self._stop = asyncio.Event()
        self._init: asyncio.Future[Init] = asyncio.get_running_loop().create_future()
        self._created = asyncio.Event()
        self._created_at = 0.0
        self._source: EngineSource | None = None
        self._origin: float | None = None
        self.last_heard = clock.now()
        self.finished = asyncio.Event()
        self.appends = 0
        self.rejected = 0
        self.paced_s = 0.0
        self.audio_in_s = 0.0

    # ------------------------------------------------------------ lifecycle

    def stop(self, reason: str) -> None:
        """End the session (idempotent; the first reason wins)."""
        if self.end_reason is None:
            self.end_reason = reason
        self._stop.set()

    def _put(self, text: str) -> None:
        if not self.outbox.put(text):
            log.warning("session %s: client does not read its events", self.session_id)
            self.stop("client_too_slow")

    async def run(self, lending: Lending) -> str:
        """Run the session until it ends; returns why it ended.  Always gives the claim (or
        the engine session) back and ends the outbox with ``session.closed``."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(), name=f"{self.session_id}:watch")
                tasks.create_task(self._engine(lending), name=f"{self.session_id}:engine")
        except* _Ended:
            pass
        except* Exception as group:
            failure = describe(group)
            if not failure.expected:
                log.error("realtime session %s failed", self.session_id, exc_info=group)
            self.stop(failure.code)
            self._put(error_event(failure.code, failure.message))
        finally:
            # Shielded: a cancelled handler must still give the replica back.
            await asyncio.shield(self._teardown(lending))
        return self.end_reason or "ended"

    async def _teardown(self, lending: Lending) -> None:
        self.stop(self.end_reason or "ended")
        self.outbox.close(
            event("session.closed", reason=self.end_reason, session_id=self.session_id)
        )
        try:
            if self._source is not None:
                await self._source.close(self.loop.binding, self.loop.broken, hung=self.loop.hung)
            else:
                lending.cancel()
        except Exception:
            log.exception("engine session of %s failed to close", self.session_id)
        finally:
            self.finished.set()
            log.info(
                "realtime session ended",
                extra={
                    "session_id": self.session_id,
                    "reason": self.end_reason,
                    "units": self.loop.steps,
                },
            )

    async def _engine(self, lending: Lending) -> None:
        await lending.wait(self._on_queue)
        self._put(event("session.queue_done"))
        init = await self._wait_init()
        voice = None
        if init.voice_bytes is not None:
            try:
                voice = await asyncio.to_thread(decode_reference, init.voice_bytes)
            except InvalidVoice as exc:
                self._put(error_event(exc.code, str(exc)))
                self.stop(exc.code)
                raise _Ended from None
        self.responder.tts_enabled = init.tts_enabled
        source = lending.source(SessionConfig(instructions=init.instructions, voice=voice))
        self._source = source
        try:
            binding: EngineBinding = await source.open(self._on_queue)
        except (CallError, EngineError) as exc:
            code = getattr(exc, "code", "engine_unavailable")
            self._put(error_event(code, str(exc)))
            self.stop(code)
            raise _Ended from None
        self.responder.attach(binding.session)
        self._put(
            event(
                "session.created",
                session_id=self.session_id,
                mode=self.mode,
                engine=binding.name,
                unit_ms=UNIT_MS,
                input_rate=INPUT_RATE,
                output_rate=OUTPUT_RATE,
                max_duration_s=self.max_duration_s,
            )
        )
        self._created.set()
        self._created_at = self._clock.now()
        await self.loop.run(binding)

    async def _wait_init(self) -> Init:
        deadline = self._clock.now() + self._config.init_timeout_s
        done = asyncio.Event()
        self._init.add_done_callback(lambda _: done.set())
        if not await self._clock.wait_until(done, deadline):
            self._put(error_event("init_timeout", "no session.init came in time"))
            self.stop("init_timeout")
            raise _Ended
        return self._init.result()

    def _on_queue(self, position: int, estimated_wait_s: float, queue_length: int) -> None:
        self._put(
            event(
                "session.queued",
                position=position,
                estimated_wait_s=estimated_wait_s,
                queue_length=queue_length,
            )
        )

    async def _watch(self) -> None:
        while True:
            if self._stop.is_set():
                raise _Ended
            now = self._clock.now()
            if now - self.last_heard > self._config.idle_timeout_s:
                self.stop("idle_timeout")
            elif self._created.is_set() and now - self._created_at > self.max_duration_s:
                self.stop("max_duration")
            if not self._stop.is_set():
                await self._clock.wait_until(self._stop, now + _WATCH_INTERVAL_S)

    # ------------------------------------------------------------ inbound

    async def receive(self, raw: str | bytes) -> None:
        """One client message.  Returns once it is handled; while the client is ahead of
        the wall clock this waits (the caller reads nothing meanwhile: TCP paces it)."""
        self.last_heard = self._clock.now()
        try:
            if len(raw) > _PARSE_ON_LOOP_BYTES:
                frame = await asyncio.to_thread(parse_frame, raw)
            else:
                frame = parse_frame(raw)
            await self._handle(frame)
        except ClientError as exc:
            self.rejected += 1
            self._put(error_event(exc.code, exc.message))

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, Close):
            self.stop(frame.reason)
        elif isinstance(frame, Init):
            if self._init.done():
                raise ClientError("already_initialized", "the session was initialized already")
            self._init.set_result(frame)
        elif not self._created.is_set():
            raise ClientError("session_not_ready", "input.append before session.created")
        else:
            await self._append(frame)

    async def _append(self, frame: Append) -> None:
        samples = frame.audio
        now = self._clock.now()
        if self._origin is None:
            # Anchor where the slicer does: at the first audio, or at the wall clock when
            # the unit loop has started without audio.
            self._origin = (
                self.slicer.due_time(-1) if self.slicer.started else now - samples.size / INPUT_RATE
            )
        end_s = (self.slicer.position + samples.size) / INPUT_RATE
        ahead = end_s - (now - self._origin)
        if ahead > self._config.max_ahead_s:
            wait = ahead - self._config.max_ahead_s
            self.paced_s += wait
            await self._clock.sleep_until(now + wait)
            now = self._clock.now()
            if self._stop.is_set():
                return
        behind = round((now - self._origin) * INPUT_RATE) - self.slicer.position - samples.size
        gap = behind if behind > _REALIGN_S * INPUT_RATE else 0
        index = (self.slicer.position + gap) // UNIT_SAMPLES
        offset_ms = (self.slicer.position + gap) % UNIT_SAMPLES * 1000 // INPUT_RATE
        self.appends += 1
        self.audio_in_s += samples.size / INPUT_RATE
        if frame.force_listen:
            self.responder.force_listen(max(index, self.slicer.next_index))
        if frame.frames:
            self.frames.add(index, frame.frames, offset_ms, self.slicer.next_index)
        if samples.size or gap:
            # A paused client (behind the wall clock) resumes at the wall clock: the pause
            # was silence the sender left out, not lost audio.
            self.slicer.append(samples, now, gap=gap, missing=0)

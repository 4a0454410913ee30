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
at most ``MAX_APPEND_S`` of audio and ``MAX_FRAMES_PER_APPEND`` frames; a client that does not
read its events (``MAX_OUTBOX`` waiting) is ended; a bad frame gets an ``error`` event and the
session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np
from numpy.typing import NDArray

from omni.api import (
    INPUT_RATE,
    OUTPUT_RATE,
    UNIT_MS,
    UNIT_SAMPLES,
    DuplexSession,
    EngineBinding,
    EngineSource,
    Frame,
    PartialUnit,
    QueueCallback,
    SessionConfig,
    StepResult,
    Unit,
    require,
)
from omni.errors import EngineError
from realtime.audio import decode_voice, video_to_rgb
from realtime.clock import Clock
from realtime.config import CallConfig
from realtime.errors import CallError, InvalidVoice, describe
from realtime.slicer import UnitSlicer
from realtime.unit_loop import StepTiming, UnitLoop

log = logging.getLogger(__name__)

MODES = ("audio", "video")
MAX_APPEND_S = 2.0
"""Audio one ``input.append`` may carry (the protocol sends one second)."""
MAX_FRAMES_PER_APPEND = 4
MAX_FRAME_PIXELS = 4096 * 4096
"""Larger JPEGs are refused before they are decoded (a decompression bomb)."""
MAX_PROMPT_CHARS = 16_000
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


class ClientError(Exception):
    """A client frame that cannot be used: answered with an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Ended(Exception):
    pass


def event(kind: str, **fields: Any) -> str:
    body: dict[str, Any] = {"type": kind}
    body.update(fields)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def error_event(code: str, message: str) -> str:
    return event("error", error={"code": code, "message": message})


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


# ------------------------------------------------------------------ client frames


@dataclass(frozen=True, slots=True)
class Init:
    instructions: str | None
    voice_bytes: bytes | None
    tts_enabled: bool


@dataclass(frozen=True, slots=True)
class Append:
    audio: NDArray[np.float32]
    force_listen: bool
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


ClientFrame = Init | Append | Close


def parse_frame(raw: str | bytes) -> ClientFrame:
    """One client frame; raises ClientError (code, message) for anything unusable."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ClientError("invalid_json", "message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("invalid_json", f"message is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ClientError("invalid_event", "a message must be a JSON object with a string 'type'")
    kind = body["type"]
    if kind == "input.append":
        return _parse_append(body.get("input"))
    if kind == "session.init":
        return _parse_init(body.get("payload", {}))
    if kind == "session.close":
        reason = body.get("reason")
        ok = isinstance(reason, str) and 0 < len(reason) <= 64 and reason.isprintable()
        return Close(reason if ok and isinstance(reason, str) else "client_close")
    raise ClientError("unknown_event", f"unknown event type {str(kind)[:64]!r}")


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError("invalid_event", f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("invalid_base64", f"{what} is not valid base64") from None


def _parse_append(body: object) -> Append:
    if not isinstance(body, dict):
        raise ClientError("invalid_event", "input.append needs an 'input' object")
    data = _b64(body.get("audio", ""), "input.audio")
    if len(data) % 4:
        raise ClientError("invalid_audio", "input.audio must be float32 samples (4 bytes each)")
    if len(data) > MAX_APPEND_S * INPUT_RATE * 4:
        raise ClientError(
            "audio_too_long", f"one input.append carries at most {MAX_APPEND_S:g} s of audio"
        )
    audio = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(audio).all():
        raise ClientError("invalid_audio", "input.audio holds NaN or infinite samples")
    np.clip(audio, -1.0, 1.0, out=audio)
    force = body.get("force_listen", False)
    if not isinstance(force, bool):
        raise ClientError("invalid_event", "input.force_listen must be a boolean")
    raw_frames = body.get("video_frames") or []
    if not isinstance(raw_frames, list):
        raise ClientError("invalid_event", "input.video_frames must be a list of base64 JPEGs")
    if len(raw_frames) > MAX_FRAMES_PER_APPEND:
        raise ClientError(
            "too_many_frames", f"one input.append carries at most {MAX_FRAMES_PER_APPEND} frames"
        )
    frames = tuple(_check_jpeg(_b64(f, "input.video_frames[]")) for f in raw_frames)
    return Append(audio, force, frames)


def _check_jpeg(data: bytes) -> bytes:
    """``data`` if it looks like a JPEG of a sane size (cheap: reads the headers only)."""
    size = jpeg_size(data)
    if size is None:
        raise ClientError("invalid_frame", "a video frame is not a JPEG image")
    if size[0] * size[1] > MAX_FRAME_PIXELS or 0 in size:
        raise ClientError("invalid_frame", f"a video frame of {size[0]}x{size[1]} is too large")
    return data


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header; None when it is not a JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _parse_init(payload: object) -> Init:
    if not isinstance(payload, dict):
        raise ClientError("invalid_init", "session.init needs a 'payload' object")
    prompt = payload.get("system_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise ClientError(
            "invalid_init", f"payload.system_prompt must be a string of <= {MAX_PROMPT_CHARS}"
        )
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        raise ClientError("invalid_init", "payload.config must be an object")
    tts = config.get("tts_enabled", True)
    if not isinstance(tts, bool):
        raise ClientError("invalid_init", "payload.config.tts_enabled must be a boolean")
    voice = payload.get("voice") or {}
    if not isinstance(voice, dict):
        raise ClientError("invalid_init", "payload.voice must be an object")
    clip = voice.get("tts_ref_audio_base64") or voice.get("ref_audio_base64")
    voice_bytes = _b64(clip, "payload.voice.ref_audio_base64") if clip else None
    return Init(instructions=prompt or None, voice_bytes=voice_bytes, tts_enabled=tts)


def decode_reference(data: bytes) -> NDArray[np.float32]:
    """A voice reference: an audio file PyAV reads, else raw float32 16 kHz mono samples
    (blocking: run it off the event loop)."""
    try:
        return decode_voice(data)
    except InvalidVoice as exc:
        if len(data) % 4 or len(data) < INPUT_RATE * 4:
            raise
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all() or np.abs(samples).max() > 1.0:
            raise exc from None
        return samples


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


# ------------------------------------------------------------------ results


class WsResponder:
    """The session's StepSink: each unit's result becomes the protocol's events.

    A speaking unit gives ``response.output_text.delta`` (when it has text) and one
    ``response.output_audio.delta`` (its speech, base64 float32 24 kHz); a listening unit gives
    ``response.listen``; the end of the model's turn gives ``response.done``.  ``force_listen``
    interrupts the engine (``DuplexSession.interrupt``): results of steps that began before
    it, and of the unit it came with, are reported as listening and their speech never sent.
    """

    def __init__(self, put: Callable[[str], None], tts_enabled: bool = True) -> None:
        self._put = put
        self.tts_enabled = tts_enabled
        self._session: DuplexSession | None = None
        self._epoch = 0
        self._step_epoch = 0
        self._forced: set[int] = set()
        self._in_turn = False
        self.turns = 0
        self.spoken_units = 0
        self.audio_out_samples = 0
        self.forced = 0

    def attach(self, session: DuplexSession) -> None:
        self._session = session

    def force_listen(self, index: int) -> None:
        """The client asked the model to listen from unit ``index`` on (now)."""
        self.forced += 1
        self._forced = {i for i in self._forced if i >= index - 2}
        self._forced.add(index)
        self._epoch += 1
        if self._session is not None:
            self._session.interrupt()
        if self._in_turn:
            self._in_turn = False
            self._put(event("response.done", response={"status": "cancelled"}))

    def stepping(self, index: int) -> None:
        self._step_epoch = self._epoch

    async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
        listen = result.listen or self._step_epoch != self._epoch or unit.index in self._forced
        self._forced.discard(unit.index)
        if listen:
            if self._in_turn:
                self._done()
            self._put(event("response.listen", unit=unit.index, text=result.heard))
            return
        self._speak(unit.index, result)

    async def early(self, part: PartialUnit, result: StepResult) -> None:
        """An early step (sessions here run none unless configured): speech goes out at
        once; listening is left for the unit's own step to report."""
        if result.listen or self._step_epoch != self._epoch or part.index in self._forced:
            return
        self._speak(part.index, result)

    def _speak(self, index: int, result: StepResult) -> None:
        self._in_turn = True
        self.spoken_units += 1
        if result.text:
            self._put(event("response.output_text.delta", delta=result.text, unit=index))
        if self.tts_enabled and result.audio is not None and result.audio.size:
            self.audio_out_samples += result.audio.size
            audio = base64.b64encode(result.audio.astype("<f4").tobytes()).decode("ascii")
            self._put(event("response.output_audio.delta", audio=audio, unit=index))
        if result.end_of_turn:
            self._done()

    def _done(self) -> None:
        self._in_turn = False
        self.turns += 1
        self._put(event("response.done", response={"status": "completed"}))

    def failed(self, index: int, exc: Exception) -> None:
        # Not an ``error`` event: the official client ends its session on any error, and the
        # session goes on after one failed step (the unit loop ends it after several).
        self._put(event("response.step_failed", unit=index, message=str(exc)[:200]))


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

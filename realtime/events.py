"""The data-channel protocol: typed events both ways, and the channel that sends them.

Every message is one JSON object with a ``type``.  docs/PROTOCOL.md documents each one; keep
the two in step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, Protocol

from realtime.clock import Clock

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 16 * 1024
_MAX_BACKLOG = 64
_MAX_BUFFERED_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ServerEvent:
    type: ClassVar[str]

    def to_json(self) -> str:
        body: dict[str, Any] = {"type": self.type}
        body.update(asdict(self))
        return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class SessionCreated(ServerEvent):
    type: ClassVar[str] = "session.created"
    call_id: str
    engine: str
    mode: str
    unit_ms: int
    input_rate: int
    output_rate: int


@dataclass(frozen=True, slots=True)
class SessionQueued(ServerEvent):
    type: ClassVar[str] = "session.queued"
    position: int
    """1 = next to be served."""
    estimated_wait_s: float
    queue_length: int


@dataclass(frozen=True, slots=True)
class SessionQueueDone(ServerEvent):
    type: ClassVar[str] = "session.queue_done"
    waited_s: float


@dataclass(frozen=True, slots=True)
class UnitDone(ServerEvent):
    type: ClassVar[str] = "unit"
    index: int
    state: Literal["listen", "speak"]
    text: str
    end_of_turn: bool
    timings: Mapping[str, float]
    """wait_ms (last sample in -> step start), late_ms (behind schedule), step_ms, and the
    engine's own stage timings."""
    dropped_units: int
    missing_ms: int


@dataclass(frozen=True, slots=True)
class OutputTextDelta(ServerEvent):
    type: ClassVar[str] = "response.output_text.delta"
    delta: str
    unit: int


@dataclass(frozen=True, slots=True)
class SpeechStarted(ServerEvent):
    type: ClassVar[str] = "input.speech_started"
    at_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped(ServerEvent):
    type: ClassVar[str] = "input.speech_stopped"
    at_ms: int


@dataclass(frozen=True, slots=True)
class InputTranscript(ServerEvent):
    type: ClassVar[str] = "input.transcript"
    text: str
    """What the engine understood the person to say in the turn that just ended."""
    unit: int


@dataclass(frozen=True, slots=True)
class ResponseInterrupted(ServerEvent):
    type: ClassVar[str] = "response.interrupted"
    reason: Literal["barge_in", "client_cancel"]
    cleared_ms: int


@dataclass(frozen=True, slots=True)
class ErrorEvent(ServerEvent):
    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Pong(ServerEvent):
    type: ClassVar[str] = "pong"
    id: str | int | None = None
    t: float | None = None
    """The client's own timestamp from its ping, returned unchanged."""


@dataclass(frozen=True, slots=True)
class SessionClosed(ServerEvent):
    type: ClassVar[str] = "session.closed"
    reason: str


# ---- client -> server


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | int | None = None
    t: float | None = None


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    pass


ClientEvent = Ping | ResponseCancel


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """Parse one client message; raises ProtocolError with a code for the client."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_MESSAGE_BYTES:
        raise ProtocolError(
            "message_too_large", f"messages are limited to {MAX_CLIENT_MESSAGE_BYTES} bytes"
        )
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("invalid_json", "message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"message is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError("invalid_event", "a message must be a JSON object with a string 'type'")
    kind = body["type"]
    if kind == "ping":
        ping_id = body.get("id")
        stamp = body.get("t")
        if ping_id is not None and (
            isinstance(ping_id, bool) or not isinstance(ping_id, (str, int))
        ):
            raise ProtocolError("invalid_event", "ping.id must be a string or an integer")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, (int, float))):
            raise ProtocolError("invalid_event", "ping.t must be a number")
        try:
            t = float(stamp) if stamp is not None else None
        except OverflowError:
            t = math.inf
        if t is not None and not math.isfinite(t):
            raise ProtocolError("invalid_event", "ping.t must be a finite number")
        return Ping(id=ping_id, t=t)
    if kind == "response.cancel":
        return ResponseCancel()
    raise ProtocolError("unknown_event", f"unknown event type {kind!r}")


class DataPort(Protocol):
    """What the event channel needs of a data channel."""

    @property
    def is_open(self) -> bool: ...

    @property
    def buffered_bytes(self) -> int: ...

    def send(self, text: str) -> None: ...


class EventChannel:
    """Sends server events; holds a short backlog until the channel opens.

    Events are dropped (and counted) rather than queued without bound when the client does
    not read them.
    """

    def __init__(self) -> None:
        self._port: DataPort | None = None
        self._backlog: deque[str] = deque(maxlen=_MAX_BACKLOG)
        self._opened = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.listener: Callable[[str], None] | None = None
        """Also given every event's JSON text (the call's recording, when there is one)."""

    def attach(self, port: DataPort) -> None:
        self._port = port
        self._opened.set()
        self.flush()

    def flush(self) -> None:
        port = self._port
        if port is None or not port.is_open:
            return
        while self._backlog:
            self._send_now(port, self._backlog.popleft())

    def send(self, event: ServerEvent) -> None:
        text = event.to_json()
        if self.listener is not None:
            self.listener(text)
        port = self._port
        if port is None or not port.is_open:
            if len(self._backlog) == self._backlog.maxlen:
                self.dropped += 1
            self._backlog.append(text)
            return
        self.flush()
        self._send_now(port, text)

    async def drain(self, clock: Clock, timeout_s: float, open_timeout_s: float = 0.0) -> None:
        """Wait (briefly) until what was sent has left, e.g. before closing the call; when
        events wait for a channel that has not opened, wait up to ``open_timeout_s`` for it."""
        if self._backlog and open_timeout_s > 0 and not self._opened.is_set():
            await clock.wait_until(self._opened, clock.now() + open_timeout_s)
        self.flush()
        deadline = clock.now() + timeout_s
        port = self._port
        while port is not None and port.is_open and port.buffered_bytes > 0:
            if clock.now() >= deadline:
                return
            await clock.sleep_until(clock.now() + 0.01)

    def _send_now(self, port: DataPort, text: str) -> None:
        if port.buffered_bytes > _MAX_BUFFERED_BYTES:
            self.dropped += 1
            return
        try:
            port.send(text)
        except Exception as exc:  # the channel closed under us: the call is ending
            log.debug("event not sent: %s", exc)
            self.dropped += 1
            return
        self.sent += 1

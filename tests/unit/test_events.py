"""The data-channel protocol: server events, client parsing, and the event channel."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from realtime import events as ev
from realtime.events import (
    MAX_CLIENT_MESSAGE_BYTES,
    EventChannel,
    Ping,
    ProtocolError,
    ResponseCancel,
    ServerEvent,
    parse_client_event,
)
from tests.support.clock import FakeClock

SAMPLES: dict[type[ServerEvent], ServerEvent] = {
    ev.SessionCreated: ev.SessionCreated(
        call_id="c1",
        engine="echo",
        mode="duplex",
        unit_ms=1000,
        input_rate=16000,
        output_rate=24000,
    ),
    ev.UnitDone: ev.UnitDone(
        index=3,
        state="speak",
        text="hi",
        end_of_turn=True,
        timings={"wait_ms": 1.5, "step_ms": 20.0},
        dropped_units=1,
        missing_ms=40,
    ),
    ev.OutputTextDelta: ev.OutputTextDelta(delta="[echo 2.0 s]", unit=4),
    ev.SpeechStarted: ev.SpeechStarted(at_ms=1020),
    ev.SpeechStopped: ev.SpeechStopped(at_ms=3060),
    ev.ResponseInterrupted: ev.ResponseInterrupted(reason="barge_in", cleared_ms=1200),
    ev.ErrorEvent: ev.ErrorEvent(code="engine_error", message="boom"),
    ev.Pong: ev.Pong(id="p1", t=12.5),
    ev.SessionClosed: ev.SessionClosed(reason="hangup"),
    ev.SessionQueued: ev.SessionQueued(position=2, estimated_wait_s=240.0, queue_length=3),
    ev.SessionQueueDone: ev.SessionQueueDone(waited_s=12.5),
    ev.InputTranscript: ev.InputTranscript(text="what is the capital of france", unit=3),
}


def test_every_server_event_has_a_sample_here() -> None:
    defined = {
        obj
        for obj in vars(ev).values()
        if isinstance(obj, type) and issubclass(obj, ServerEvent) and obj is not ServerEvent
    }
    assert defined == set(SAMPLES)


@pytest.mark.parametrize("event", list(SAMPLES.values()), ids=lambda e: type(e).__name__)
def test_server_events_serialize_to_json_with_their_type(event: ServerEvent) -> None:
    text = event.to_json()
    body = json.loads(text)
    assert isinstance(body, dict)
    assert body["type"] == type(event).type
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    assert set(body) == {"type", *fields}
    for name, value in fields.items():
        assert body[name] == (dict(value) if name == "timings" else value)
    assert text == json.dumps(body, separators=(",", ":")), "compact separators"


def test_event_types_are_distinct_and_dotted_names() -> None:
    types = [cls.type for cls in SAMPLES]
    assert len(set(types)) == len(types)
    assert ev.UnitDone.type == "unit"
    assert ev.Pong.type == "pong"
    assert ev.SessionCreated.type == "session.created"


def test_pong_defaults_serialize_as_null() -> None:
    assert json.loads(ev.Pong().to_json()) == {"type": "pong", "id": None, "t": None}


# ---------------------------------------------------------------- client -> server


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"ping"}', Ping()),
        ('{"type":"ping","id":"a"}', Ping(id="a")),
        ('{"type":"ping","id":7,"t":1234}', Ping(id=7, t=1234.0)),
        ('{"type":"ping","t":1.25}', Ping(t=1.25)),
        (b'{"type":"ping","id":"b"}', Ping(id="b")),
        ('{"type":"response.cancel"}', ResponseCancel()),
        ('{"type":"response.cancel","extra":1}', ResponseCancel()),
    ],
)
def test_valid_client_events_parse(raw: str | bytes, expected: object) -> None:
    parsed = parse_client_event(raw)
    assert parsed == expected
    assert type(parsed) is type(expected)


def test_ping_t_comes_back_as_a_float() -> None:
    parsed = parse_client_event('{"type":"ping","t":5}')
    assert isinstance(parsed, Ping)
    assert isinstance(parsed.t, float)


def _code(raw: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw)
    assert info.value.message
    assert str(info.value) == info.value.message
    return info.value.code


@pytest.mark.parametrize("raw", ["{", "ping", "", '{"type":"ping",}', b"\xff\xfe\x00{"])
def test_malformed_json_is_invalid_json(raw: str | bytes) -> None:
    assert _code(raw) == "invalid_json"


@pytest.mark.parametrize("raw", ["[]", "1", '"ping"', "null", '[{"type":"ping"}]'])
def test_non_objects_are_invalid_events(raw: str) -> None:
    assert _code(raw) == "invalid_event"


@pytest.mark.parametrize("raw", ["{}", '{"type":3}', '{"type":null}', '{"kind":"ping"}'])
def test_objects_without_a_string_type_are_invalid_events(raw: str) -> None:
    assert _code(raw) == "invalid_event"


def test_unknown_types_are_unknown_events() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_event('{"type":"session.update"}')
    assert info.value.code == "unknown_event"
    assert "session.update" in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"ping","id":1.5}',
        '{"type":"ping","id":[1]}',
        '{"type":"ping","id":{"a":1}}',
        '{"type":"ping","t":"now"}',
        '{"type":"ping","t":true}',
        '{"type":"ping","t":[1]}',
    ],
)
def test_wrong_field_types_are_invalid_events(raw: str) -> None:
    assert _code(raw) == "invalid_event"


def test_a_boolean_ping_id_is_an_invalid_event() -> None:
    assert _code('{"type":"ping","id":true}') == "invalid_event"


@pytest.mark.parametrize("stamp", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_ping_t_is_rejected(stamp: str) -> None:
    assert _code(f'{{"type":"ping","t":{stamp}}}') in ("invalid_json", "invalid_event")


def test_oversized_messages_are_too_large() -> None:
    assert _code("x" * (MAX_CLIENT_MESSAGE_BYTES + 1)) == "message_too_large"
    padded = '{"type":"ping","id":"' + "a" * (MAX_CLIENT_MESSAGE_BYTES + 10) + '"}'
    assert _code(padded) == "message_too_large"
    assert _code(padded.encode()) == "message_too_large"


def test_a_message_at_the_limit_is_accepted() -> None:
    head = '{"type":"ping","id":"'
    raw = head + "a" * (MAX_CLIENT_MESSAGE_BYTES - len(head) - 2) + '"}'
    assert len(raw) == MAX_CLIENT_MESSAGE_BYTES
    assert isinstance(parse_client_event(raw), Ping)


def test_the_limit_counts_utf8_bytes_of_text_messages() -> None:
    head, tail = '{"type":"ping","id":"', '"}'
    raw = head + "€" * 6_000 + tail  # 6 K characters, 18 KiB of UTF-8
    assert len(raw) < MAX_CLIENT_MESSAGE_BYTES < len(raw.encode())
    assert _code(raw) == "message_too_large"
    fits = head + "€" * ((MAX_CLIENT_MESSAGE_BYTES - len(head) - len(tail)) // 3) + tail
    assert len(fits.encode()) <= MAX_CLIENT_MESSAGE_BYTES
    assert isinstance(parse_client_event(fits), Ping)


# ---------------------------------------------------------------- the event channel


class FakePort:
    def __init__(self, is_open: bool = True) -> None:
        self.is_open = is_open
        self.buffered_bytes = 0
        self.sent: list[str] = []
        self.fail = False

    def send(self, text: str) -> None:
        if self.fail:
            raise ConnectionError("closed")
        self.sent.append(text)


def speech(at_ms: int) -> ev.SpeechStarted:
    return ev.SpeechStarted(at_ms=at_ms)


def at_ms_of(port: FakePort) -> list[int]:
    return [json.loads(t)["at_ms"] for t in port.sent]


def test_events_before_attach_are_buffered_and_flushed_in_order() -> None:
    channel = EventChannel()
    for i in range(5):
        channel.send(speech(i))
    assert channel.sent == 0
    port = FakePort()
    channel.attach(port)
    assert at_ms_of(port) == [0, 1, 2, 3, 4]
    assert channel.sent == 5
    channel.send(speech(5))
    assert at_ms_of(port) == [0, 1, 2, 3, 4, 5]
    assert channel.dropped == 0


def test_the_backlog_is_bounded_and_keeps_the_newest() -> None:
    channel = EventChannel()
    for i in range(70):
        channel.send(speech(i))
    assert channel.dropped == 6
    port = FakePort()
    channel.attach(port)
    assert at_ms_of(port) == list(range(6, 70))
    assert channel.sent == 64


def test_attaching_a_channel_that_is_not_open_yet_keeps_buffering() -> None:
    channel = EventChannel()
    channel.send(speech(0))
    port = FakePort(is_open=False)
    channel.attach(port)
    channel.send(speech(1))
    assert port.sent == []
    port.is_open = True
    channel.send(speech(2))
    assert at_ms_of(port) == [0, 1, 2], "the backlog goes first"


def test_flush_sends_the_backlog_once_the_channel_opens() -> None:
    channel = EventChannel()
    port = FakePort(is_open=False)
    channel.attach(port)
    channel.send(speech(0))
    channel.flush()
    assert port.sent == []
    port.is_open = True
    channel.flush()
    channel.flush()
    assert at_ms_of(port) == [0]


def test_events_are_dropped_while_the_client_does_not_read() -> None:
    channel = EventChannel()
    port = FakePort()
    channel.attach(port)
    channel.send(speech(0))
    port.buffered_bytes = 256 * 1024 + 1
    channel.send(speech(1))
    channel.send(speech(2))
    assert channel.dropped == 2
    port.buffered_bytes = 256 * 1024
    channel.send(speech(3))
    assert at_ms_of(port) == [0, 3]
    assert (channel.sent, channel.dropped) == (2, 2)


def test_a_send_failing_under_us_is_counted_not_raised() -> None:
    channel = EventChannel()
    port = FakePort()
    channel.attach(port)
    port.fail = True
    channel.send(speech(0))
    assert (channel.sent, channel.dropped) == (0, 1)


class DrainingPort(FakePort):
    """Its buffer empties at a fixed rate of the fake clock."""

    def __init__(self, clock: FakeClock, pending: int, per_s: float) -> None:
        super().__init__()
        self._clock = clock
        self._start = clock.now()
        self._pending = pending
        self._per_s = per_s

    @property  # type: ignore[override]
    def buffered_bytes(self) -> int:
        left = self._pending - (self._clock.now() - self._start) * self._per_s
        return max(0, int(left))

    @buffered_bytes.setter
    def buffered_bytes(self, value: Any) -> None:
        pass


async def test_drain_waits_until_the_buffer_is_empty() -> None:
    clock = FakeClock(autojump=True)
    channel = EventChannel()
    channel.attach(DrainingPort(clock, pending=1000, per_s=10_000))
    start = clock.now()
    await channel.drain(clock, timeout_s=2.0)
    assert clock.now() - start == pytest.approx(0.1, abs=0.011)


async def test_drain_gives_up_at_its_timeout() -> None:
    clock = FakeClock(autojump=True)
    channel = EventChannel()
    channel.attach(DrainingPort(clock, pending=10**9, per_s=1))
    start = clock.now()
    await channel.drain(clock, timeout_s=0.5)
    assert clock.now() - start == pytest.approx(0.5, abs=0.011)


async def test_drain_returns_at_once_without_an_open_channel() -> None:
    clock = FakeClock(autojump=True)
    channel = EventChannel()
    await channel.drain(clock, timeout_s=5)
    port = DrainingPort(clock, pending=10**9, per_s=1)
    port.is_open = False
    channel.attach(port)
    await channel.drain(clock, timeout_s=5)
    assert clock.sleeps == 0

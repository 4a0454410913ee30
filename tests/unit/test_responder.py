"""The responder's barge-in rule with answers that start inside the person's pause (early
steps): only voice heard while the service talks interrupts it."""

from __future__ import annotations

import json

import numpy as np

from omni.api import OUTPUT_RATE, PartialUnit, StepResult
from realtime.audio import WIRE_RATE
from realtime.events import EventChannel
from realtime.playout import PlayoutBuffer
from realtime.responder import Responder


class Port:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    is_open = True
    buffered_bytes = 0

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _responder() -> tuple[Responder, PlayoutBuffer, Port]:
    events, port = EventChannel(), Port()
    events.attach(port)
    playout = PlayoutBuffer(WIRE_RATE, 4000)
    return Responder(events, playout, barge_in_ms=400), playout, port


def _answer() -> StepResult:
    speech = np.full(OUTPUT_RATE, 0.2, np.float32)
    return StepResult(listen=False, text="Paris.", audio=speech, heard="capital of france")


async def test_an_answer_in_the_pause_is_not_cut_by_the_speech_before_it() -> None:
    responder, playout, port = _responder()
    responder.speech_started()
    for _ in range(75):  # 1.5 s of the person's voice, 20 ms at a time
        responder.voice(20)
    responder.stepping(3)
    await responder.early(PartialUnit(3, np.zeros(8000, np.float32)), _answer())
    assert playout.level > 0 and responder.speaking
    for _ in range(10):  # the rest of the person's pause: their segment is still open
        responder.voice(0)
    assert responder.interrupts == 0
    kinds = [e["type"] for e in port.sent]
    assert kinds == ["input.transcript", "response.output_text.delta"]
    # Talking over the answer for 400 ms does interrupt it, once.
    responder.speech_started()
    for _ in range(30):
        responder.voice(20)
    assert responder.interrupts == 1
    assert playout.level == 0
    assert port.sent[-1]["type"] == "response.interrupted"


async def test_an_early_answer_from_before_an_interrupt_is_dropped() -> None:
    responder, playout, port = _responder()
    responder.stepping(2)
    responder.interrupt("client_cancel")
    await responder.early(PartialUnit(2, np.zeros(8000, np.float32)), _answer())
    assert playout.level == 0
    assert [e["type"] for e in port.sent] == ["response.interrupted"]

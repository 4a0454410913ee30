"""The engine side of a call: what each step means for the person on the line.

The unit loop steps the engine; the responder turns each result into events and queued
speech (``StepSink``; an early step's speech is queued at once, inside its unit), and handles
barge-in:

* Stale results: an interrupt (barge-in or a client's ``response.cancel``) starts a new
  epoch.  A step that began before it may still return speech; that result is reported as
  listening and its speech and text never play.
* Barge-in: while the service is talking (speech queued, or the engine mid-turn), voiced input
  for ``barge_in_ms`` interrupts it: the engine session is told (``DuplexSession.interrupt``),
  the playout buffer is cleared at once, and the client gets ``response.interrupted``.
  One interrupt per speech segment.  Only voice heard while the service talks counts: an
  answer that starts in the person's pause is not cut short by the speech before it.
"""

from __future__ import annotations

import logging

from omni.api import DuplexSession, PartialUnit, StepResult, Unit
from realtime.audio import WIRE_RATE, OutboundAudio
from realtime.events import (
    ErrorEvent,
    EventChannel,
    InputTranscript,
    OutputTextDelta,
    ResponseInterrupted,
    UnitDone,
)
from realtime.playout import PlayoutBuffer
from realtime.unit_loop import StepTiming

log = logging.getLogger(__name__)


class Responder:
    def __init__(self, events: EventChannel, playout: PlayoutBuffer, barge_in_ms: int) -> None:
        self._events = events
        self._playout = playout
        self._barge_in_ms = barge_in_ms
        self._speech_out = OutboundAudio()
        self._session: DuplexSession | None = None
        self._epoch = 0
        self._step_epoch = 0
        self._engine_speaking = False
        self._barged_in = False
        self._overlap_ms = 0
        """Voiced input heard while the service talks, in the current speech segment."""
        self.interrupts = 0

    def attach(self, session: DuplexSession) -> None:
        """The call's engine session, once it has one (interrupts reach it from then on)."""
        self._session = session

    @property
    def speaking(self) -> bool:
        """Whether the service is talking (speech queued, or the engine mid-turn)."""
        return self._playout.level > 0 or self._engine_speaking

    # ------------------------------------------------------------ barge-in

    def speech_started(self) -> None:
        """The person started a new speech segment: it may interrupt once."""
        self._barged_in = False
        self._overlap_ms = 0

    def voice(self, voiced_ms: int) -> None:
        """The person's speech segment goes on, with ``voiced_ms`` of voice in the audio just
        heard."""
        if not self.speaking:
            self._overlap_ms = 0
            return
        self._overlap_ms += voiced_ms
        if not self._barged_in and self._overlap_ms >= self._barge_in_ms:
            self._barged_in = True
            self.interrupt("barge_in")

    def interrupt(self, reason: str) -> None:
        """Stop talking now: the engine is told, queued speech is dropped at once."""
        self.interrupts += 1
        self._epoch += 1
        self._engine_speaking = False
        if self._session is not None:
            self._session.interrupt()
        cleared = self._playout.clear()
        self._events.send(
            ResponseInterrupted(
                reason="barge_in" if reason == "barge_in" else "client_cancel",
                cleared_ms=cleared * 1000 // WIRE_RATE,
            )
        )

    # ------------------------------------------------------------ StepSink

    def stepping(self, index: int) -> None:
        self._step_epoch = self._epoch

    async def result(self, unit: Unit, result: StepResult, timing: StepTiming) -> None:
        stale = self._step_epoch != self._epoch
        speak = not result.listen and not stale
        text = result.text if not stale else ""
        self._engine_speaking = speak and not result.end_of_turn
        timings = {
            "wait_ms": round(timing.wait_ms, 1),
            "late_ms": round(timing.late_ms, 1),
            "step_ms": round(timing.step_ms, 1),
        }
        timings.update({f"engine_{k}": round(v, 1) for k, v in result.timings.items()})
        if result.heard:
            self._events.send(InputTranscript(text=result.heard, unit=unit.index))
        if text:
            self._events.send(OutputTextDelta(delta=text, unit=unit.index))
        self._events.send(
            UnitDone(
                index=unit.index,
                state="speak" if speak else "listen",
                text=text,
                end_of_turn=result.end_of_turn and not stale,
                timings=timings,
                dropped_units=timing.dropped_units,
                missing_ms=unit.missing_ms,
            )
        )
        if speak and result.audio is not None and result.audio.size:
            await self._playout.push(self._speech_out.convert(result.audio))

    async def early(self, part: PartialUnit, result: StepResult) -> None:
        """An early step: speech (and what was heard) goes out at once; listening is not
        reported (the unit's own step reports the unit)."""
        if self._step_epoch != self._epoch:
            return
        if result.heard:
            self._events.send(InputTranscript(text=result.heard, unit=part.index))
        if result.listen:
            return
        self._engine_speaking = not result.end_of_turn
        if result.text:
            self._events.send(OutputTextDelta(delta=result.text, unit=part.index))
        if result.audio is not None and result.audio.size:
            await self._playout.push(self._speech_out.convert(result.audio))

    def failed(self, index: int, exc: Exception) -> None:
        self._events.send(ErrorEvent("engine_error", f"unit {index}: {exc}"))

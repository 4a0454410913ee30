"""A ``/v1/realtime`` session's step results as the protocol's events (its ``StepSink``)."""

from __future__ import annotations

import base64
from collections.abc import Callable

from omni.api import DuplexSession, PartialUnit, StepResult, Unit
from realtime.unit_loop import StepTiming
from realtime.ws_wire import event


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

"""One call's session on a llama.cpp-omni server: our units in, the model's decisions out.

Per unit (``step``): the unit's 16 kHz audio (and its latest frame) go into the shared folder,
``prefill`` reads them (unit numbers count from 1: number 0 would make a unit the system
prompt's reference voice), ``decode`` streams the model's decision (``is_listen``) and text,
then the speech the server's vocoder wrote for the turn so far is collected.  The vocoder runs
behind the decode, so a step waits up to ``speech_wait_ms`` for it while the model talks and
hands out at most one unit (24,000 samples) of it; speech that comes later is handed out by the
next steps, in order, with no gap.  A turn's last speech is marked ``end_of_turn``.

What the server cannot do, the session does:

* It has no forced listening: for the first ``force_listen_count`` units of a session the
  model's speech is broken off (``/break``) and dropped.
* ``/break`` waits for a decode in flight and stops the speech pipeline, but the model's turn
  may go on.  ``interrupt`` only sets a flag (thread-safe, never blocks); the replica thread
  then breaks, deletes the speech already written, and mutes the rest of the interrupted turn
  (at most ``interrupt_mute_units`` units, until the model listens).
* Its system prompt is fixed (it takes no instructions or language); a call's voice clip is its
  reference voice for the model (the vocoder's own timbre is fixed by the server's models).

``close`` breaks, resets the server (its KV caches) and deletes the call's files.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from omni.api import OUTPUT_RATE, OUTPUT_UNIT_SAMPLES, EngineError, SessionConfig, StepResult, Unit
from omni.llamacpp.client import OmniClient
from omni.llamacpp.config import LlamaCppConfig
from omni.llamacpp.files import ReplicaFiles, remove_quietly
from omni.llamacpp.speech import SpeechBuffer, SpeechFolder

log = logging.getLogger(__name__)

MEDIA_AUDIO = 1
MEDIA_OMNI = 2
_POLL_S = 0.01
TAIL_UNITS = 3
"""Listening units a turn's last speech is awaited for when the server flags no end."""


def session_config_body(config: LlamaCppConfig, voice: str) -> dict[str, object]:
    """The ``update_session_config`` request that starts a clean session with ``voice``."""
    body: dict[str, object] = {
        "media_type": MEDIA_OMNI if config.vision else MEDIA_AUDIO,
        "duplex_mode": True,
        "voice_audio": voice,
    }
    if config.sliding_window:
        body["sliding_window_mode"] = config.sliding_window
        body["sliding_window_high_water"] = config.sliding_window_high_water
        body["sliding_window_low_water"] = config.sliding_window_low_water
    return body


class LlamaCppSession:
    """A duplex session on one server (the replica's); all methods but ``interrupt`` run on
    the replica's thread.

    Raises EngineError from ``step`` and ``close`` when the server fails or does not answer in
    time (the call reports it and goes on; a failed ``close`` takes the replica out of service
    until it warms up again)."""

    def __init__(
        self,
        client: OmniClient,
        config: LlamaCppConfig,
        files: ReplicaFiles,
        *,
        voice: str,
        session: SessionConfig,
        keep: tuple[Path, ...] = (),
    ) -> None:
        self._client = client
        self._config = config
        self._files = files
        self._keep = keep
        """Files of the replica's in/ folder that outlive the session (its default voice)."""
        self._speech = SpeechFolder(files.speech_dir)
        self._buffer = SpeechBuffer(int(config.max_buffer_s * OUTPUT_RATE))
        self._interrupted = threading.Event()
        self._forced = config.force_listen_count
        self._muted = 0
        self._count = 0
        self._turn = False
        """Speech of a turn is being handed out (or awaited)."""
        self._turn_done = False
        """The server flagged that turn's last speech as written."""
        self._tail = 0
        """Units the model has listened since it stopped talking in the turn."""
        self._closed = False
        if session.instructions:
            log.info("llama.cpp-omni has a fixed system prompt: the call's instructions are unused")
        self._speech.sweep()
        began = time.perf_counter()
        client.update_session_config(session_config_body(config, voice))
        self.open_ms = (time.perf_counter() - began) * 1000

    # ------------------------------------------------------------------ contract

    def step(self, unit: Unit) -> StepResult:
        """Feed one unit (16 kHz audio, frames) and map the model's decision; blocking.

        Returns speech as float32 mono at 24 kHz, at most OUTPUT_UNIT_SAMPLES; raises
        EngineError."""
        if self._closed:
            raise EngineError("the session is closed")
        timings: dict[str, float] = {}
        if self._interrupted.is_set():
            self._interrupted.clear()
            self._after_barge_in(timings)
        forced = self._forced > 0
        if forced:
            self._forced -= 1
        self._count += 1
        self._prefill(unit, self._count, timings)
        began = time.perf_counter()
        decoded = self._client.decode(self._files.server_out, stop=self._interrupted.is_set)
        timings["decode"] = (time.perf_counter() - began) * 1000
        speaks = not decoded.listen
        if self._interrupted.is_set():
            return StepResult(listen=True, timings=timings)
        if forced or self._muted:
            if self._muted:
                self._muted = self._muted - 1 if speaks else 0
            if speaks:
                self._break("muted", timings)
            self._drop_speech()
            return StepResult(listen=True, timings=timings)
        if speaks and not self._turn:
            self._turn, self._turn_done, self._tail = True, False, 0
        audio, end = self._speech_for_unit(speaks, timings)
        if speaks:
            return StepResult(
                listen=False, text=decoded.text, audio=audio, end_of_turn=end, timings=timings
            )
        if audio is None:
            return StepResult(listen=True, timings=timings)
        return StepResult(listen=False, audio=audio, end_of_turn=end, timings=timings)

    def interrupt(self) -> None:
        """Barge-in: the next step breaks the server's output off; thread-safe, never blocks."""
        self._interrupted.set()

    def close(self) -> None:
        """Break, reset the server's caches, delete the call's files; raises EngineError when
        the server cannot be reset (idempotent)."""
        if self._closed:
            return
        self._closed = True
        failure: EngineError | None = None
        for name in ("break", "reset"):
            try:
                if name == "break":
                    self._client.break_("session_end")
                else:
                    self._client.reset()
            except EngineError as exc:
                failure = failure or exc
                log.warning("closing the session: %s failed: %s", name, exc)
        self._buffer.clear()
        self._speech.sweep()
        self._files.clear_inputs(keep=self._keep)
        self._files.clear_outputs()
        if failure is not None:
            raise EngineError(f"the server could not be reset: {failure}")

    # ------------------------------------------------------------------ steps

    def _prefill(self, unit: Unit, number: int, timings: dict[str, float]) -> None:
        config = self._config
        audio_path = self._files.write_audio(f"unit-{number}.wav", unit.audio)
        image_path = None
        if config.vision and unit.frames:
            image_path = self._files.write_image(
                f"unit-{number}", unit.frames[-1], config.image_format, config.jpeg_quality
            )
        began = time.perf_counter()
        try:
            self._client.prefill(
                self._files.server_path(audio_path),
                self._files.server_path(image_path) if image_path else "",
                number,
                (2 if config.hd else 1) if image_path else None,
            )
        finally:
            # The server has read both files when it answers (or never will).
            remove_quietly(audio_path, image_path)
        timings["prefill"] = (time.perf_counter() - began) * 1000

    def _speech_for_unit(
        self, speaks: bool, timings: dict[str, float]
    ) -> tuple[np.ndarray | None, bool]:
        """Up to one unit of the turn's speech, and whether it is the turn's last."""
        if speaks:
            self._tail = 0
        elif self._turn:
            self._tail += 1
        self._collect()
        began = time.perf_counter()
        if (speaks or self._tail == 1) and self._config.speech_wait_ms:
            deadline = began + self._config.speech_wait_ms / 1000
            while (
                self._buffer.samples < OUTPUT_UNIT_SAMPLES
                and not self._turn_done
                and not self._interrupted.is_set()
                and time.perf_counter() < deadline
            ):
                time.sleep(_POLL_S)
                self._collect()
        timings["speech_wait"] = (time.perf_counter() - began) * 1000
        audio = self._buffer.pop(OUTPUT_UNIT_SAMPLES)
        drained = self._buffer.samples == 0
        # After the model stops talking its last speech may still come; the end of the turn is
        # the server's end flag, or TAIL_UNITS units of listening without one.
        giving_up = self._turn and not speaks and drained and self._tail >= TAIL_UNITS
        end = self._turn and audio is not None and drained and (self._turn_done or giving_up)
        if end or giving_up or (not speaks and drained and self._turn_done):
            self._turn, self._turn_done, self._tail = False, False, 0
        return audio, end

    def _collect(self) -> None:
        chunks, done = self._speech.take()
        for chunk in chunks:
            self._buffer.push(chunk)
        if done:
            self._turn_done = True
        if self._buffer.dropped:
            log.warning(
                "speech backlog over %.0f s: dropped %d samples",
                self._config.max_buffer_s,
                self._buffer.dropped,
            )
            self._buffer.dropped = 0

    def _after_barge_in(self, timings: dict[str, float]) -> None:
        self._break("barge_in", timings)
        self._drop_speech()
        self._muted = self._config.interrupt_mute_units

    def _break(self, reason: str, timings: dict[str, float]) -> None:
        began = time.perf_counter()
        try:
            self._client.break_(reason)
        except EngineError as exc:
            log.warning("break (%s) failed: %s", reason, exc)
        timings["break"] = (time.perf_counter() - began) * 1000

    def _drop_speech(self) -> None:
        self._buffer.clear()
        self._speech.sweep()
        self._turn, self._turn_done, self._tail = False, False, 0

"""The ``lite`` engine behind the duplex contract: per 1 s unit it listens or speaks.

A replica owns one of each model (a recognizer worker process, the language model, the
voice) and a reply thread; a session owns the conversation: its turn detector, its memory and
the reply being spoken.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from omni.api import (
    INPUT_RATE,
    OUTPUT_UNIT_SAMPLES,
    DuplexSession,
    EngineInfo,
    PartialUnit,
    ReplicaEngine,
    SessionConfig,
    StepResult,
    Unit,
)
from omni.lite.asr import SpeechRecognizer, Transcript
from omni.lite.config import LiteConfig
from omni.lite.language_models import gemma_installed
from omni.lite.llm import ReplyModel
from omni.lite.recognizers import resolve_recognizer
from omni.lite.reply import Reply
from omni.lite.tts import Voice
from omni.lite.turns import SpeechProbability, Step, TurnDetector, silero

log = logging.getLogger(__name__)

_FIRST_AUDIO_TIMEOUT_S = 0.8
"""How long the unit that ends a turn waits for the reply's first speech."""
_NEXT_AUDIO_WAIT_S = 0.3
"""How long a later unit waits when the next sentence is not ready yet."""
_EARLY_AUDIO_WAIT_S = 0.03
"""How long an early step waits for the reply's first speech (the next one, a few tens of
ms of media later, looks again)."""
_CLOSE_WAIT_S = 5.0
_PEEK_MAX_S = 8.0
"""At a pause, an utterance up to this long is transcribed whole and goes on if the person
does (the recognizer then hears the turn in one piece); a longer one is ended there (each
piece is transcribed once, so a long turn's last pause costs only its last piece)."""


class LiteSession:
    def __init__(self, replica: LiteReplica, config: SessionConfig) -> None:
        self._replica = replica
        self._config = replica.config
        self._system = config.instructions or replica.config.system_prompt
        self._turns = TurnDetector(replica.config, replica.vad_factory())
        self._history: deque[tuple[str, str]] = deque(maxlen=max(1, replica.config.memory_turns))
        self._reply: Reply | None = None
        self._reply_job: Future[None] | None = None
        self._prime_job: Future[None] | None = None
        self._interrupt = threading.Event()
        self._lock = threading.Lock()
        self._barged_in = False
        self._heard_so_far: list[Transcript] = []
        """Transcripts of the current turn's pieces already finished (to speculate)."""
        self._open_samples = 0
        """Audio in the recognizer's current utterance."""
        self._speculative: Reply | None = None
        self._speculated_at_voiced_ms = 0
        self._speculations: list[Reply] = []
        self._unannounced: Reply | None = None
        """The reply whose question has not been reported (``StepResult.heard``) yet."""
        self.turn_ends: list[tuple[int, int]] = []
        """Where each turn ended: (unit, samples of it heard) for an early step, (-1, 0) for
        a unit's own step (for logs and tests)."""
        self.speculation_hits = 0
        self.heard: list[str] = []
        """What the person said, turn by turn (for logs and tests)."""
        self.replies: list[str] = []
        self.dropped_turns = 0
        self._heard_index = -1
        self._heard_samples = 0
        """Samples of unit ``_heard_index`` already heard through early steps."""

    @property
    def speaking(self) -> bool:
        reply = self._reply
        return reply is not None and not reply.exhausted

    # ------------------------------------------------------------------ contract

    def step(self, unit: Unit) -> StepResult:
        began = time.perf_counter()
        heard = self._heard_samples if self._heard_index == unit.index else 0
        self._heard_index, self._heard_samples = -1, 0
        timings, new_reply = self._hear(unit.audio[heard:])
        result = self._announce(self._deliver(new_reply, timings))
        timings["total"] = (time.perf_counter() - began) * 1000
        return result

    def step_early(self, part: PartialUnit) -> StepResult:
        """The unit so far, in a pause: the turn may end here, and its reply start at once
        (its first second of speech); the unit's own step then goes on from there."""
        began = time.perf_counter()
        heard = self._heard_samples if self._heard_index == part.index else 0
        self._heard_index, self._heard_samples = part.index, max(heard, part.audio.size)
        timings, new_reply = self._hear(part.audio[heard:])
        reply = self._reply
        if reply is None or reply.handed_samples:
            result = StepResult(listen=True, timings=timings)
        else:
            result = self._deliver(new_reply, timings, wait_s=_EARLY_AUDIO_WAIT_S)
            if result.audio is None:
                result = StepResult(listen=True, timings=timings)
        result = self._announce(result)
        timings["total"] = (time.perf_counter() - began) * 1000
        return result

    @property
    def speculated(self) -> list[str]:
        """Questions answered early, in order, as far as they are known (logs and tests)."""
        return [r.question for r in self._speculations if r.asked.is_set()]

    def _announce(self, result: StepResult) -> StepResult:
        """Report what the person said (``heard``) with the first speech of its reply, or
        once it is clear nothing was said."""
        reply = self._unannounced
        if reply is None or not reply.asked.is_set():
            return result
        if not reply.question:
            self._unannounced = None
            return result
        if result.listen and not reply.unheard and reply is self._reply:
            return result
        self._unannounced = None
        self.heard.append(reply.question)
        return replace(result, heard=reply.question)

    def _hear(self, audio: NDArray[np.float32]) -> tuple[dict[str, float], bool]:
        """Feed the person's next audio to the turn detector and the recognizer; starts a
        reply when a turn ends (returns True then)."""
        if self._interrupt.is_set():
            self._interrupt.clear()
            self._stop_reply()
            self._drop_speculation(keep_text=True)
            self._barged_in = True
        update = self._turns.feed(audio)
        asr_ms = 0.0
        new_reply = False
        asr = self._replica.asr
        for turn_step in update.steps:
            t = time.perf_counter()
            if turn_step.kind is Step.AUDIO and turn_step.audio is not None:
                asr.feed(turn_step.audio)
                self._open_samples += turn_step.audio.size
            elif turn_step.kind is Step.DISCARD:
                asr.abort()
                self._open_samples = 0
                self._drop_speculation()
            elif turn_step.kind is Step.END:
                new_reply = self._end_of_turn(asr) or new_reply
            asr_ms += (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        self._speculate(asr)
        asr_ms += (time.perf_counter() - t) * 1000
        return {"vad": update.vad_ms, "asr": asr_ms}, new_reply

    def interrupt(self) -> None:
        self._interrupt.set()
        with self._lock:
            if self._reply is not None:
                self._reply.cancel()

    def close(self) -> None:
        self._stop_reply()
        self._drop_speculation()
        for job in (self._reply_job, self._prime_job):
            if job is not None and not job.cancel():
                try:
                    job.result(timeout=_CLOSE_WAIT_S)
                except Exception:
                    log.exception("reply failed while closing")
        self._replica.asr.abort()
        self._open_samples = 0
        self._turns.reset()
        self._history.clear()

    # ------------------------------------------------------------------ turns

    def _end_of_turn(self, asr: SpeechRecognizer) -> bool:
        """The person finished a turn: answer it, unless it ended over our own speech."""
        self.turn_ends.append((self._heard_index, self._heard_samples))
        self._open_samples = 0  # every way on ends the recognizer's utterance
        if self.speaking and not self._barged_in:
            asr.abort()
            self._drop_speculation()
            self.dropped_turns += 1
            return False
        self._barged_in = False
        speculative, self._speculative = self._speculative, None
        if speculative is not None and self._turns.voiced_ms <= self._speculated_at_voiced_ms:
            # Nothing voiced since the early answer: it is the answer, already under way
            # (and a whole-utterance recognizer might read words into the pause).
            asr.abort()
            self._heard_so_far = []
            self.speculation_hits += 1
            self._adopt(speculative)
            return True
        if speculative is not None:
            speculative.cancel()
        parts = [*self._heard_so_far, asr.finish_soon()]
        self._heard_so_far = []
        self._adopt(self._launch(parts))
        return True

    def _speculate(self, asr: SpeechRecognizer) -> None:
        """In a pause that may be the end of the turn, recognise and answer it already.

        The turn ends only after ``end_pause_ms``: once the person has paused
        ``speculate_after_ms``, recognising what they said and starting the reply now hides
        their time; if the person goes on talking, the reply is dropped, and the utterance
        goes on (a long one is ended at the pause instead, and its transcript kept for the
        turn's full text: see ``_PEEK_MAX_S``).  Nothing waits here: the transcript comes to
        the reply thread.
        """
        turns, config = self._turns, self._config
        if self._speculative is not None and turns.voiced_ms > self._speculated_at_voiced_ms:
            self._drop_speculation(keep_text=True)
        if (
            not config.speculate_after_ms
            or self._speculative is not None
            or turns.pause_ms < config.speculate_after_ms
            or turns.voiced_ms < config.min_speech_ms
            or self.speaking
        ):
            return
        if self._open_samples <= _PEEK_MAX_S * INPUT_RATE:
            parts = [*self._heard_so_far, asr.peek_soon()]
        else:
            self._heard_so_far.append(asr.finish_soon())
            self._open_samples = 0
            parts = list(self._heard_so_far)
        self._speculated_at_voiced_ms = turns.voiced_ms
        self._speculative = self._launch(parts)
        self._speculations.append(self._speculative)

    def _drop_speculation(self, keep_text: bool = False) -> None:
        speculative, self._speculative = self._speculative, None
        if speculative is not None:
            speculative.cancel()
        if not keep_text:
            self._heard_so_far = []

    def _adopt(self, reply: Reply) -> None:
        """``reply`` is the answer to the turn that just ended: speak it."""
        self._stop_reply()
        with self._lock:
            self._reply = reply
        self._unannounced = reply

    def _context(self) -> list[dict[str, str]]:
        """The messages before the next question: the system prompt and the turns kept."""
        messages = [{"role": "system", "content": self._system}]
        if self._config.memory_turns:
            for asked, answered in self._history:
                messages.append({"role": "user", "content": asked})
                messages.append({"role": "assistant", "content": answered})
        return messages

    def prime(self) -> None:
        """Have the model read the next question's context now, while the person is still
        to speak: the reply then only reads the question (the model keeps the longest prefix
        its last prompt shares with the next one, and the turns kept shift at every reply)."""
        if self._prime_job is not None and not self._prime_job.done():
            return
        replica = self._replica
        self._prime_job = replica.reply_thread.submit(_read_prompt, replica.model, self._context())

    def _launch(self, parts: list[Transcript]) -> Reply:
        """Start writing and speaking a reply to the question in ``parts`` in the background."""
        messages = self._context()

        def prompt(question: str) -> list[dict[str, str]]:
            return [*messages, {"role": "user", "content": question}]

        reply = Reply(parts, self._config.max_reply_sentences, self._config.first_words)
        replica = self._replica
        self._reply_job = replica.reply_thread.submit(
            reply.write, replica.model, replica.voice, prompt
        )
        return reply

    def _stop_reply(self) -> None:
        with self._lock:
            reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()

    # ------------------------------------------------------------------ speaking

    def _deliver(
        self, new_reply: bool, timings: dict[str, float], wait_s: float | None = None
    ) -> StepResult:
        reply = self._reply
        if reply is None:
            return StepResult(listen=True, timings=timings)
        waited = time.perf_counter()
        if wait_s is None:
            # A reply not heard yet is waited for longer than a sentence in the middle of
            # one, once its question is known (only the model and the voice are left); while
            # the recognizer is still at work the unit goes on, and an early step or the next
            # unit hands out the first speech.
            starting = (new_reply or not reply.handed_samples) and reply.asked.is_set()
            wait_s = _FIRST_AUDIO_TIMEOUT_S if starting else _NEXT_AUDIO_WAIT_S
        reply.wait_for_audio(wait_s)
        timings["wait_audio"] = (time.perf_counter() - waited) * 1000
        audio, text = reply.take(OUTPUT_UNIT_SAMPLES)
        if reply.error is not None:
            self._stop_reply()
            raise reply.error
        if reply.unheard:
            with self._lock:
                if self._reply is reply:
                    self._reply = None
            return StepResult(listen=True, timings=timings)
        if audio.size == 0 and not reply.handed_samples:
            return StepResult(listen=True, timings=timings)
        done = reply.exhausted
        if done:
            with self._lock:
                if self._reply is reply:
                    self._reply = None
            if reply.text.strip():
                self._history.append((reply.question, reply.text.strip()))
                self.replies.append(reply.text.strip())
                if self._config.memory_turns:
                    self.prime()
            stats = reply.stats
            timings.update(
                llm_first_token=stats.first_token_ms,
                llm_ms_per_token=stats.llm_ms / max(1, stats.tokens),
                reply_first_audio=stats.first_audio_ms,
                tts_rtf_x1000=1000 * stats.tts_ms / max(1.0, stats.audio_ms),
            )
        if audio.size == 0 and not done:
            return StepResult(listen=False, timings=timings)
        return StepResult(
            listen=False,
            text=text,
            audio=audio if audio.size else None,
            end_of_turn=done,
            timings=timings,
        )


class LiteReplica:
    def __init__(self, config: LiteConfig) -> None:
        self.config = config
        self.asr = SpeechRecognizer(config.recognizer, config.asr_threads, config.model_cache_dir)
        self.model = ReplyModel(
            config.language_model,
            config.llm_threads,
            config.max_reply_tokens,
            config.temperature,
            config.model_cache_dir,
        )
        self.voice = Voice(config.threads, config.speech_rate)
        self.reply_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lite-reply")

    def vad_factory(self) -> SpeechProbability:
        return silero()

    def warmup(self) -> None:
        began = time.perf_counter()
        # Runs on the replica's thread before any model starts: every thread and process the
        # models start from here inherits the lower priority.
        lower_thread_priority(self.config.nice)
        self.asr.start()
        self.model.load()
        self.voice.load()
        self.voice.synthesize("Hello.")
        # The prompt's fixed head (the system prompt, and a pretrained model's examples) is
        # computed now and kept: each question only adds its own words to it.
        greeting = [
            {"role": "system", "content": self.config.system_prompt},
            {"role": "user", "content": "Hi"},
        ]
        self.model.generate(greeting, lambda _: True)
        self.asr.feed(np.zeros(INPUT_RATE // 2, dtype=np.float32))
        self.asr.finish()
        silero()(bytes(1024))
        log.info(
            "lite replica ready in %.1f s (recognizer %s, language model %s)",
            time.perf_counter() - began,
            self.asr.name,
            self.model.model.name if self.model.model else "?",
        )

    def open_session(self, config: SessionConfig) -> DuplexSession:
        session = LiteSession(self, config)
        session.prime()  # another session, or other instructions, may have used the model
        return session

    def shutdown(self) -> None:
        self.reply_thread.shutdown(wait=True, cancel_futures=True)
        self.asr.close()
        self.model.close()
        self.voice.close()


def _read_prompt(model: ReplyModel, messages: list[dict[str, str]]) -> None:
    """Let ``model`` read ``messages`` (and keep them): a generation stopped at its first
    token.  A failure here is logged; the reply that follows reads the prompt itself."""
    try:
        model.generate(messages, lambda _: True)
    except Exception:
        log.exception("reading the next prompt ahead failed")


def lower_thread_priority(by: int) -> None:
    """Make the calling thread (and what it starts from now on) ``by`` nicer (Linux only:
    elsewhere this would apply to the whole process, the media included)."""
    if by <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError as exc:
        log.warning("could not lower the lite engine's priority: %s", exc)


def lite_engine(config: LiteConfig, replicas: int) -> ReplicaEngine:
    recognizer = resolve_recognizer(config.recognizer)
    language_model = config.language_model
    if language_model == "auto":
        language_model = "gemma3-270m" if gemma_installed() else "smollm2-135m"
    info = EngineInfo(
        "lite",
        f"CPU conversation: Silero VAD, {recognizer}, {language_model}, Piper (English)",
        replicas,
    )
    return ReplicaEngine(info, lambda index: LiteReplica(config))

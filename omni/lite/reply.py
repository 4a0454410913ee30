"""One spoken reply: generated in the background, sentence by sentence, and handed out a
unit at a time.

The question comes as transcripts still on their way from the recognizer: the reply thread
waits for them, so the replica's thread never does (a whole-utterance recognizer takes a
while, and the call's units must keep going meanwhile).

The language model streams tokens; each finished sentence goes to speech synthesis at once,
so the first sentence can play while the rest is still being written.  ``cancel`` (barge-in)
stops the model and the synthesis at the next token or sentence.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from omni.api import OUTPUT_RATE
from omni.lite.asr import Transcript
from omni.lite.llm import ReplyModel
from omni.lite.phrases import Ending, next_piece, speakable
from omni.lite.tts import Voice

_TAIL_MS = {Ending.SENTENCE: None, Ending.CLAUSE: 150, Ending.WORDS: 40}
"""Quiet kept after a piece of speech, by how its text ended (None: the voice's own, about
150-190 ms): a cut between words is followed by the rest of its phrase without a pause."""


@dataclass(slots=True)
class ReplyStats:
    first_token_ms: float = 0.0
    tokens: int = 0
    llm_ms: float = 0.0
    first_audio_ms: float = 0.0
    """From the start of the reply to its first sentence's speech being ready."""
    tts_ms: float = 0.0
    audio_ms: float = 0.0


@dataclass(slots=True)
class _Chunk:
    audio: NDArray[np.float32]
    text: str
    offset: int = 0


Prompt = Callable[[str], list[dict[str, str]]]
"""The chat messages that ask a question."""


@dataclass
class Reply:
    """Written and spoken on the reply thread; read a unit at a time on the replica thread."""

    parts: Sequence[Transcript]
    """The question, as the transcripts of its pieces (in order)."""
    max_sentences: int
    first_words: int = 0
    """The opening words go to the voice once this many are written (0: at their first
    clause or sentence end); see ``omni.lite.phrases``."""
    question: str = ""
    """The question's text, once its transcripts have come (``asked`` is set then)."""
    asked: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    """What the model wrote (up to where it stopped)."""
    error: BaseException | None = None
    stats: ReplyStats = field(default_factory=ReplyStats)
    _chunks: deque[_Chunk] = field(default_factory=deque)
    _ready: threading.Condition = field(default_factory=threading.Condition)
    _began: float = field(default_factory=time.perf_counter)
    _handed_text: bool = False
    handed_samples: int = 0
    """Speech handed out so far (24 kHz samples)."""

    def cancel(self) -> None:
        self.cancelled.set()
        with self._ready:
            self._chunks.clear()
            self._ready.notify_all()

    # ---------------------------------------------------------------- reply thread

    @property
    def unheard(self) -> bool:
        """Its transcripts came, and held no words: there is nothing to answer."""
        return self.asked.is_set() and not self.question

    def write(self, model: ReplyModel, voice: Voice, prompt: Prompt) -> None:
        pending = ""
        spoken = 0
        """Sentences spoken (an opening clause is not one)."""
        opened = False

        def on_text(token: str) -> bool:
            nonlocal pending, spoken, opened
            if self.cancelled.is_set():
                return True
            pending += token
            while (piece := next_piece(pending, not opened, self.first_words)) is not None:
                pending = piece.rest
                self._speak(voice, piece.text, _TAIL_MS[piece.ending])
                opened = True
                spoken += piece.ending is Ending.SENTENCE
                if spoken >= self.max_sentences:
                    return True
            return self.cancelled.is_set()

        try:
            texts = [part.result().strip() for part in self.parts]
            self.question = " ".join(t for t in texts if t)
            self.asked.set()
            if not self.question or self.cancelled.is_set():
                return
            generation = model.generate(prompt(self.question), on_text)
            self.text = generation.text
            self.stats.first_token_ms = generation.first_token_ms
            self.stats.tokens = generation.tokens
            # Speech for finished sentences is made inside the generation callback.
            self.stats.llm_ms = max(0.0, generation.total_ms - self.stats.tts_ms)
            if spoken < self.max_sentences and pending.strip() and not self.cancelled.is_set():
                self._speak(voice, pending.strip())
        except BaseException as exc:
            self.error = exc
        finally:
            self.asked.set()
            with self._ready:
                self.finished.set()
                self._ready.notify_all()

    def _speak(self, voice: Voice, sentence: str, tail_ms: int | None = None) -> None:
        words = speakable(sentence)
        if not words or self.cancelled.is_set():
            return
        began = time.perf_counter()
        audio = voice.synthesize(words, tail_ms)
        self.stats.tts_ms += (time.perf_counter() - began) * 1000
        self.stats.audio_ms += audio.size * 1000 / OUTPUT_RATE
        with self._ready:
            if self.cancelled.is_set():
                return
            if not self.stats.first_audio_ms:
                self.stats.first_audio_ms = (time.perf_counter() - self._began) * 1000
            self._chunks.append(_Chunk(audio, sentence))
            self._ready.notify_all()

    # ---------------------------------------------------------------- replica thread

    def wait_for_audio(self, timeout_s: float) -> None:
        with self._ready:
            self._ready.wait_for(
                lambda: bool(self._chunks) or self.finished.is_set() or self.cancelled.is_set(),
                timeout=timeout_s,
            )

    @property
    def exhausted(self) -> bool:
        """Everything written has been handed out and nothing more will come."""
        with self._ready:
            return self.finished.is_set() and not self._chunks

    def take(self, samples: int) -> tuple[NDArray[np.float32], str]:
        """Up to ``samples`` of speech, and the text of the sentences that start in it."""
        parts: list[NDArray[np.float32]] = []
        texts: list[str] = []
        need = samples
        with self._ready:
            while need > 0 and self._chunks:
                chunk = self._chunks[0]
                if chunk.offset == 0:
                    texts.append((" " if self._handed_text else "") + chunk.text)
                    self._handed_text = True
                piece = chunk.audio[chunk.offset : chunk.offset + need]
                parts.append(piece)
                chunk.offset += piece.size
                need -= piece.size
                if chunk.offset >= chunk.audio.size:
                    self._chunks.popleft()
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        self.handed_samples += audio.size
        return audio, "".join(texts)

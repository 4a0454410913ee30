"""The ``echo`` engine: an echo test call, as calling apps have.

It listens; when the person stops talking it says their last utterance back (up to
``max_utterance_s``), one unit at a time, with the text ``[echo 2.4 s]``.  It checks a
microphone, a speaker and the latency of the whole path.  Utterances that end while it is
still talking are not echoed (that would be its own voice coming back), unless the person
interrupted it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import soxr
import webrtcvad
from numpy.typing import NDArray

from omni.api import (
    INPUT_RATE,
    OUTPUT_RATE,
    OUTPUT_UNIT_SAMPLES,
    DuplexSession,
    EngineInfo,
    ReplicaEngine,
    SessionConfig,
    StepResult,
    Unit,
    require,
)

_FRAME_MS = 30
_FRAME = INPUT_RATE * _FRAME_MS // 1000
_PAD_MS = 150


@dataclass(frozen=True, slots=True)
class EchoConfig:
    max_utterance_s: float = 10.0
    """The longest stretch said back (the end of a longer utterance)."""
    end_silence_ms: int = 600
    """Silence that ends an utterance."""
    min_speech_ms: int = 300
    """Voiced audio below this is noise, not an utterance."""
    aggressiveness: int = 2
    """WebRTC VAD mode, 0..3."""

    def __post_init__(self) -> None:
        require(0.5 <= self.max_utterance_s <= 60, "max_utterance_s must be 0.5..60")
        require(90 <= self.end_silence_ms <= 5000, "end_silence_ms must be 90..5000")
        require(30 <= self.min_speech_ms <= 5000, "min_speech_ms must be 30..5000")
        require(0 <= self.aggressiveness <= 3, "aggressiveness must be 0..3")


class EchoSession:
    def __init__(self, config: EchoConfig) -> None:
        self._config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._carry = np.zeros(0, dtype=np.float32)
        # The recording also holds the silence that ends an utterance, trimmed afterwards.
        keep_s = config.max_utterance_s + (config.end_silence_ms + 2 * _PAD_MS) / 1000
        limit = int(keep_s * INPUT_RATE)
        self._recording = np.zeros(limit, dtype=np.float32)
        self._recorded = 0
        """Samples in the recording (a ring: the newest ``limit`` samples are kept)."""
        self._pre = np.zeros(INPUT_RATE * _PAD_MS // 1000, dtype=np.float32)
        self._in_speech = False
        self._voiced_ms = 0
        self._silence_ms = 0
        self._reply = np.zeros(0, dtype=np.float32)
        self._reply_pos = 0
        self._reply_text = ""
        self._interrupted = threading.Event()
        self.discarded_utterances = 0

    @property
    def speaking(self) -> bool:
        return self._reply_pos < self._reply.size

    def step(self, unit: Unit) -> StepResult:
        began = time.perf_counter()
        if self._interrupted.is_set():
            self._interrupted.clear()
            self._reply = np.zeros(0, dtype=np.float32)
            self._reply_pos = 0
        utterance = self._listen(unit.audio)
        listened = time.perf_counter()
        if utterance is not None:
            if self.speaking:
                self.discarded_utterances += 1
            else:
                self._start_reply(utterance)
        result = self._speak()
        timings = {
            "vad": (listened - began) * 1000,
            "total": (time.perf_counter() - began) * 1000,
        }
        return StepResult(
            listen=result is None,
            text=result[1] if result else "",
            audio=result[0] if result else None,
            end_of_turn=result[2] if result else False,
            timings=timings,
        )

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._recorded = 0
        self._reply = np.zeros(0, dtype=np.float32)
        self._reply_pos = 0

    # ------------------------------------------------------------------ listening

    def _listen(self, audio: NDArray[np.float32]) -> NDArray[np.float32] | None:
        """Feed one unit; returns a finished utterance, if one ended in it."""
        data = np.concatenate([self._carry, audio]) if self._carry.size else audio
        whole = data.size // _FRAME * _FRAME
        self._carry = data[whole:].copy()
        finished: NDArray[np.float32] | None = None
        pcm = (np.clip(data[:whole], -1, 1) * 32767).astype(np.int16)
        for offset in range(0, whole, _FRAME):
            frame = data[offset : offset + _FRAME]
            voiced = self._vad.is_speech(pcm[offset : offset + _FRAME].tobytes(), INPUT_RATE)
            done = self._advance(frame, voiced)
            if done is not None:
                finished = done
        return finished

    def _advance(self, frame: NDArray[np.float32], voiced: bool) -> NDArray[np.float32] | None:
        if not self._in_speech:
            if voiced:
                self._in_speech = True
                self._voiced_ms = _FRAME_MS
                self._silence_ms = 0
                self._recorded = 0
                self._record(self._pre)
                self._record(frame)
            else:
                self._pre = np.concatenate([self._pre[frame.size :], frame])
            return None
        self._record(frame)
        if voiced:
            self._voiced_ms += _FRAME_MS
            self._silence_ms = 0
            return None
        self._silence_ms += _FRAME_MS
        if self._silence_ms < self._config.end_silence_ms:
            return None
        self._in_speech = False
        self._pre = np.zeros_like(self._pre)
        if self._voiced_ms < self._config.min_speech_ms:
            return None
        trailing = max(0, self._silence_ms - _PAD_MS) * INPUT_RATE // 1000
        return self._recording_tail(trailing)

    def _record(self, samples: NDArray[np.float32]) -> None:
        size = self._recording.size
        for start in range(0, samples.size, size):
            chunk = samples[start : start + size]
            pos = self._recorded % size
            first = min(chunk.size, size - pos)
            self._recording[pos : pos + first] = chunk[:first]
            self._recording[: chunk.size - first] = chunk[first:]
            self._recorded += chunk.size

    def _recording_tail(self, drop_last: int) -> NDArray[np.float32]:
        size = self._recording.size
        count = min(self._recorded, size)
        end = self._recorded % size
        ordered = (
            np.concatenate([self._recording[end:], self._recording[:end]])
            if self._recorded > size
            else self._recording[:count].copy()
        )
        ordered = ordered[: max(0, ordered.size - drop_last)]
        limit = int(self._config.max_utterance_s * INPUT_RATE)
        return ordered[-limit:]

    # ------------------------------------------------------------------ speaking

    def _start_reply(self, utterance: NDArray[np.float32]) -> None:
        self._reply = soxr.resample(utterance, INPUT_RATE, OUTPUT_RATE).astype(np.float32)
        self._reply_pos = 0
        self._reply_text = f"[echo {utterance.size / INPUT_RATE:.1f} s]"

    def _speak(self) -> tuple[NDArray[np.float32], str, bool] | None:
        if not self.speaking:
            return None
        first = self._reply_pos == 0
        chunk = self._reply[self._reply_pos : self._reply_pos + OUTPUT_UNIT_SAMPLES]
        self._reply_pos += chunk.size
        return chunk, (self._reply_text if first else ""), not self.speaking


class EchoReplica:
    def __init__(self, config: EchoConfig) -> None:
        self._config = config

    def warmup(self) -> None:
        session = EchoSession(self._config)
        session.step(Unit(index=0, start_ms=0, audio=np.zeros(INPUT_RATE, dtype=np.float32)))
        session.close()

    def open_session(self, config: SessionConfig) -> DuplexSession:
        return EchoSession(self._config)

    def shutdown(self) -> None:
        return None


def echo_engine(config: EchoConfig, replicas: int) -> ReplicaEngine:
    info = EngineInfo("echo", "echo test: says your last utterance back", replicas)
    return ReplicaEngine(info, lambda index: EchoReplica(config))

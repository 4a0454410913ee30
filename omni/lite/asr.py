"""Speech recognition in a worker process of its own (the recognizers are in
``omni.lite.recognizers``).

Recognizers hold the GIL while they decode (pocketsphinx) or use every core they are given
(onnxruntime): in the server's process they would stall the event loop of every call.  Audio
is streamed to the worker while the person talks; a streaming recognizer decodes it as it
comes, a whole-utterance one (Moonshine) keeps it until the turn ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, EngineError
from omni.errors import EngineUnavailable
from omni.lite.recognizers import make_recognizer

_START_TIMEOUT_S = 60.0
_REPLY_TIMEOUT_S = 30.0


def _serve(conn: Connection, name: str, threads: int) -> None:
    """The worker process: one recognizer, commands in order from ``conn``."""
    try:
        recognizer = make_recognizer(name, threads)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    busy_s = 0.0
    audio_s = 0.0
    conn.send(("ready", recognizer.name))
    while True:
        try:
            command, payload = conn.recv()
        except EOFError:
            return
        began = time.perf_counter()
        if command == "audio":
            audio = (np.frombuffer(payload, dtype="<i2") / 32767).astype(np.float32)
            recognizer.feed(audio)
            audio_s += audio.size / INPUT_RATE
        elif command == "finish":
            conn.send(("text", recognizer.finish()))
        elif command == "abort":
            recognizer.abort()
        elif command == "stats":
            conn.send(("stats", (busy_s, audio_s)))
        elif command == "stop":
            return
        busy_s += time.perf_counter() - began


class SpeechRecognizer:
    """One recognizer in a worker process; all methods are called from one thread."""

    def __init__(self, name: str = "auto", threads: int = 1) -> None:
        self._name = name
        self._threads = threads
        self._conn: Connection | None = None
        self._process: Any = None
        self.name = ""
        """The recognizer the worker runs (known once started)."""

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, self._name, self._threads),
            name="omnirtc-asr",
            daemon=True,
        )
        process.start()
        child.close()
        self._conn, self._process = parent, process
        if not parent.poll(_START_TIMEOUT_S):
            self.close(wait_s=0)
            raise EngineError(f"speech recognition did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            got, payload = parent.recv()
        except (EOFError, OSError) as exc:
            self.close(wait_s=0)
            raise EngineError(f"speech recognition worker died while starting: {exc}") from None
        if got != "ready":
            self.close()
            raise EngineUnavailable(f"speech recognition could not start: {payload}")
        self.name = str(payload)

    def feed(self, audio: NDArray[np.float32]) -> None:
        """Stream the person's audio (16 kHz mono float32) into the current utterance."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        self._send(("audio", pcm))

    def finish(self) -> str:
        """End the utterance; its best transcript ('' when nothing was heard)."""
        self._send(("finish", None))
        return str(self._expect("text", _REPLY_TIMEOUT_S))

    def abort(self) -> None:
        self._send(("abort", None))

    def stats(self) -> tuple[float, float]:
        """(seconds spent decoding, seconds of audio decoded) so far."""
        self._send(("stats", None))
        busy, audio = self._expect("stats", _REPLY_TIMEOUT_S)
        return float(busy), float(audio)

    def close(self, wait_s: float = 5.0) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop", None))
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=wait_s)
            if self._process.is_alive():
                self._process.kill()
        self._conn = self._process = None

    def _send(self, message: tuple[str, Any]) -> None:
        if self._conn is None:
            raise EngineError("speech recognition is not running")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            raise EngineError(f"speech recognition worker is gone: {exc}") from None

    def _expect(self, kind: str, timeout_s: float) -> Any:
        assert self._conn is not None
        if not self._conn.poll(timeout_s):
            # Its late answer would be read as the answer to the next question: stop the
            # worker; the replica is rebuilt with a new one.
            self.close(wait_s=0)
            raise EngineError(f"speech recognition did not answer within {timeout_s:.0f} s")
        try:
            got, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise EngineError(f"speech recognition worker died: {exc}") from None
        if got != kind:
            raise EngineError(f"speech recognition answered {got!r}, expected {kind!r}")
        return payload

"""Speech recognition in a worker process of its own (the recognizers are in
``omni.lite.recognizers``).

Recognizers hold the GIL while they decode (pocketsphinx) or use every core they are given
(onnxruntime): in the server's process they would stall the event loop of every call.  Audio
is streamed to the worker while the person talks; a streaming recognizer decodes it as it
comes, a whole-utterance one (Moonshine) keeps it until the turn ends.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, EngineError
from omni.errors import EngineUnavailable
from omni.lite.recognizers import make_recognizer

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_REPLY_TIMEOUT_S = 30.0


def _serve(conn: Connection, name: str, threads: int, cache_dir: str) -> None:
    """The worker process: one recognizer, commands in order from ``conn``."""
    try:
        recognizer = make_recognizer(name, threads, cache_dir)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    busy_s = 0.0
    audio_s = 0.0
    conn.send(("ready", (recognizer.name, recognizer.warning)))
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
        elif command == "peek":
            conn.send(("text", recognizer.peek()))
        elif command == "abort":
            recognizer.abort()
        elif command == "stats":
            conn.send(("stats", (busy_s, audio_s)))
        elif command == "stop":
            return
        busy_s += time.perf_counter() - began


class Transcript:
    """A transcript on its way from the worker; ``result()`` waits for it (from any thread)."""

    def __init__(self, owner: SpeechRecognizer) -> None:
        self._owner = owner
        self._text: str | None = None
        self._error: EngineError | None = None

    def result(self, timeout_s: float = _REPLY_TIMEOUT_S) -> str:
        """The text ('' when nothing was heard); raises EngineError if the worker failed."""
        if self._text is None and self._error is None:
            self._owner._collect(self, timeout_s)
        if self._error is not None:
            raise self._error
        return self._text or ""

    def _settle(self, text: str | None, error: EngineError | None = None) -> None:
        self._text, self._error = text, error


class SpeechRecognizer:
    """One recognizer in a worker process.  Audio and commands go from one thread (the
    replica's); a transcript may be waited for on another (the reply's): it is read from the
    worker under a lock, and every transcript that arrives first is handed to its own
    ``Transcript`` on the way."""

    def __init__(self, name: str = "auto", threads: int = 1, cache_dir: str = "") -> None:
        self._name = name
        self._threads = threads
        self._cache_dir = cache_dir
        self._conn: Connection | None = None
        self._process: Any = None
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        """Held while reading answers; sending never waits for it (a reply thread may be
        waiting for a transcript while the replica's thread sends the next audio)."""
        self._waiting: deque[Transcript] = deque()
        self.name = ""
        """The recognizer the worker runs (known once started)."""

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, self._name, self._threads, self._cache_dir),
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
        self.name, warning = payload
        if warning:
            log.warning("speech recognition (%s): %s", self.name, warning)

    def feed(self, audio: NDArray[np.float32]) -> None:
        """Stream the person's audio (16 kHz mono float32) into the current utterance."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        self._post(("audio", pcm))

    def finish_soon(self) -> Transcript:
        """End the utterance now (later audio starts the next one); its transcript comes
        while the caller goes on: a whole-utterance recognizer takes a while."""
        return self._ask("finish")

    def peek_soon(self) -> Transcript:
        """The transcript of the utterance so far, which goes on with later audio (it comes
        while the caller goes on, as ``finish_soon``'s)."""
        return self._ask("peek")

    def _ask(self, command: str) -> Transcript:
        transcript = Transcript(self)
        with self._send_lock:
            # Waiting before it is asked for: its answer may be read the moment it is sent.
            self._waiting.append(transcript)
            try:
                self._send((command, None))
            except EngineError:
                self._waiting.remove(transcript)
                raise
        return transcript

    def finish(self) -> str:
        """End the utterance and wait for its transcript ('' when nothing was heard)."""
        return self.finish_soon().result()

    def abort(self) -> None:
        self._post(("abort", None))

    def stats(self) -> tuple[float, float]:
        """(seconds spent decoding, seconds of audio decoded) so far."""
        with self._read_lock:
            self._post(("stats", None))
            busy, audio = self._read_until("stats", _REPLY_TIMEOUT_S)
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
        gone = EngineError("speech recognition stopped before this transcript came")
        while self._waiting:
            self._waiting.popleft()._settle(None, gone)

    def _post(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            self._send(message)

    def _send(self, message: tuple[str, Any]) -> None:
        """Send ``message`` (the caller holds the send lock)."""
        if self._conn is None:
            raise EngineError("speech recognition is not running")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            raise EngineError(f"speech recognition worker is gone: {exc}") from None

    def _collect(self, target: Transcript, timeout_s: float) -> None:
        """Read transcripts until ``target``'s has come, waiting at most ``timeout_s``."""
        with self._read_lock:
            self._read_until(None, timeout_s, target)

    def _read_until(
        self, kind: str | None, timeout_s: float, target: Transcript | None = None
    ) -> Any:
        """Hand arriving transcripts to the waiting ones, in order, until ``target`` has its
        own, or (``kind``) until an answer of that kind comes, which is returned."""
        deadline = time.monotonic() + timeout_s
        while True:
            if target is not None and target not in self._waiting:
                return None
            conn = self._conn
            if conn is None:
                raise EngineError("speech recognition is not running")
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                # Its late answer would be read as the answer to the next question: stop the
                # worker; the replica is rebuilt with a new one.
                self.close(wait_s=0)
                raise EngineError(f"speech recognition did not answer within {timeout_s:.0f} s")
            try:
                got, payload = conn.recv()
            except (EOFError, OSError) as exc:
                raise EngineError(f"speech recognition worker died: {exc}") from None
            if got == "text" and self._waiting:
                self._waiting.popleft()._settle(str(payload))
            elif got == kind:
                return payload
            else:
                raise EngineError(f"speech recognition answered {got!r}, expected {kind!r}")

"""Streaming speech recognition with pocketsphinx's bundled English model.

The decoder runs in a worker process of its own: pocketsphinx holds the GIL while it decodes,
which would stall the event loop of the whole server.  Audio is streamed to the worker while
the person talks, so when the turn ends only the final pass is left (tens of ms).
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

_CHUNK = INPUT_RATE // 50 * 2
"""Bytes of int16 audio per decoder call (20 ms)."""
_START_TIMEOUT_S = 60.0
_REPLY_TIMEOUT_S = 30.0


def _serve(conn: Connection) -> None:
    """The worker process: one decoder, commands in order from ``conn``."""
    from pocketsphinx import Config, Decoder

    decoder = Decoder(Config(samprate=INPUT_RATE, loglevel="FATAL"))
    in_utterance = False
    busy_s = 0.0
    audio_s = 0.0
    conn.send(("ready", None))
    while True:
        try:
            command, payload = conn.recv()
        except EOFError:
            return
        if command == "audio":
            if not in_utterance:
                decoder.start_utt()
                in_utterance = True
            began = time.perf_counter()
            for i in range(0, len(payload), _CHUNK):
                decoder.process_raw(payload[i : i + _CHUNK], False, False)
            busy_s += time.perf_counter() - began
            audio_s += len(payload) / 2 / INPUT_RATE
        elif command == "partial":
            hyp = decoder.hyp() if in_utterance else None
            conn.send(("text", hyp.hypstr if hyp else ""))
        elif command == "finish":
            text = ""
            if in_utterance:
                began = time.perf_counter()
                decoder.end_utt()
                busy_s += time.perf_counter() - began
                hyp = decoder.hyp()
                text = hyp.hypstr if hyp else ""
                in_utterance = False
            conn.send(("text", text))
        elif command == "abort":
            if in_utterance:
                decoder.end_utt()
                in_utterance = False
        elif command == "stats":
            conn.send(("stats", (busy_s, audio_s)))
        elif command == "stop":
            return


class SpeechRecognizer:
    """One pocketsphinx decoder in a worker process; all methods are called from one thread."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._process: Any = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child,), name="omnirtc-asr", daemon=True)
        process.start()
        child.close()
        self._conn, self._process = parent, process
        self._expect("ready", _START_TIMEOUT_S)

    def feed(self, audio: NDArray[np.float32]) -> None:
        """Stream the person's audio (16 kHz mono float32) into the current utterance."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        self._send(("audio", pcm))

    def partial(self) -> str:
        self._send(("partial", None))
        return str(self._expect("text", _REPLY_TIMEOUT_S))

    def finish(self) -> str:
        """End the utterance; its best transcript (lower case, '' when nothing was heard)."""
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

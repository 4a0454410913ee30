"""Replies from a small language model (``omni.lite.language_models``) via llama.cpp.

xllamacpp is a prebuilt llama.cpp wheel that loads the GGUF in well under a second and
streams tokens through a callback that can stop the generation at once.  Its server object
also opens an HTTP listener; we put it on a Unix socket in a private directory, so nothing
listens on the network.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni.api import EngineUnavailable
from omni.lite.language_models import LanguageModel, completion_prompt, find_language_model


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    tokens: int
    first_token_ms: float
    total_ms: float
    stopped: bool
    """Stopped early by the caller (barge-in, or enough sentences)."""
    prompt_read: int | None = None
    """Prompt tokens the model had to read (the rest it kept from its previous prompt); None
    when the generation was stopped before llama.cpp reported it."""


OnText = Callable[[str], bool]
"""Receives each new piece of text; returns True to stop generating."""


_REPEAT_PENALTY = 1.1
_STOP = ["\n", "User:"]
"""Where a pretrained model's answer ends: its line (it would go on with the next turn)."""


class ReplyModel:
    def __init__(
        self,
        name: str,
        threads: int,
        max_tokens: int,
        temperature: float,
        cache_dir: str = "",
    ) -> None:
        self._name = name
        self._cache_dir = cache_dir
        self.model: LanguageModel | None = None
        self._threads = threads
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._server: Any = None
        self._socket_dir: str | None = None

    def load(self) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise EngineUnavailable(f"the lite engine needs xllamacpp: {exc}") from None
        self.model = find_language_model(self._name, self._cache_dir)
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model.path)
        params.n_ctx = 2048
        params.n_parallel = 1
        # Gemma 3 attends to a sliding window in most layers; llama.cpp keeps only that window
        # for them unless told otherwise, and then cannot reuse a cached prompt: every question
        # recomputed the whole example-laden prompt (first token 540 ms against 80-120 ms).
        params.swa_full = True
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        # Threads wait for work asleep, not polling: polling threads fight every other busy
        # thread for the cores (measured: a long reply 14.1 s -> 4.7 s with both cores busy,
        # the same 2.3 s on an idle machine).
        params.cpuparams.poll = 0
        params.cpuparams_batch.poll = 0
        params.sampling.temp = self._temperature
        params.verbosity = 0
        self._socket_dir = tempfile.mkdtemp(prefix="omnirtc-llm-")
        params.hostnames = [str(Path(self._socket_dir) / "llm.sock")]
        self._server = xllamacpp.Server(params)

    def generate(self, messages: list[dict[str, str]], on_text: OnText) -> Generation:
        if self._server is None or self.model is None:
            raise RuntimeError("the reply model is not loaded")
        began = time.perf_counter()
        first: list[float] = []
        pieces: list[str] = []
        stopped = [False]
        read: list[int] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            timings = chunk.get("timings")
            if isinstance(timings, dict) and isinstance(timings.get("prompt_n"), int):
                read.append(timings["prompt_n"])
            text = _chunk_text(chunk)
            if not text:
                return stopped[0]
            if not first:
                first.append(time.perf_counter())
            pieces.append(text)
            if on_text(text):
                stopped[0] = True
            return stopped[0]

        request: dict[str, Any] = {
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
            # Small models loop on digits or phrases ("10000000..."): a mild penalty stops
            # that and changed no right answer of the quality benchmark's 30.
            "repeat_penalty": _REPEAT_PENALTY,
            "repeat_last_n": 64,
            "stream": True,
            "cache_prompt": True,
        }
        if self.model.chat:
            self._server.handle_chat_completions({**request, "messages": messages}, on_chunk)
        else:
            prompt = completion_prompt(messages)
            self._server.handle_completions({**request, "prompt": prompt, "stop": _STOP}, on_chunk)
        end = time.perf_counter()
        return Generation(
            text="".join(pieces).strip(),
            tokens=len(pieces),
            first_token_ms=((first[0] if first else end) - began) * 1000,
            total_ms=(end - began) * 1000,
            stopped=stopped[0],
            prompt_read=read[-1] if read else None,
        )

    def close(self) -> None:
        self._server = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None


def _chunk_text(chunk: dict[str, Any]) -> str:
    """The new text in one streamed chunk (chat: ``choices[0].delta.content``; completion:
    ``choices[0].text``, or ``content`` in llama.cpp's own format)."""
    choices = chunk.get("choices")
    if choices:
        first = choices[0]
        delta = first.get("delta")
        if isinstance(delta, dict):
            return str(delta.get("content") or "")
        return str(first.get("text") or "")
    return str(chunk.get("content") or "")

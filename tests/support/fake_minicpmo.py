"""A contract fake of MiniCPM-o 4.5's duplex API, written from the facts in
../shared/design/UPSTREAM.md and the upstream code as we read it (our own words, no upstream code).

What it reproduces, because the adapter must cope with each:

* ``from_pretrained``-style loading is replaced by ``FakeMiniCPMO``; ``as_duplex(**kwargs)``
  honours ``force_listen_count`` and ``generate_audio`` and ignores unknown keys.
* ``prepare(prefix_system_prompt, ref_audio, prompt_wav_path)`` wraps the prompt itself, resets
  the duplex state and decoder, and does NOT reset the Whisper streaming cache, the simplex
  caches or the vocoder caches: those leak into the next session unless the full cleanup runs.
* ``streaming_prefill``: the first call consumes 16,560 samples (a shorter first chunk is
  zero-padded in front); later calls need 16,000 buffered samples, otherwise ``success`` is False
  with "audio not enough" and the audio stays buffered; a ``<unit>`` has already been fed then.
  With the break or stop event set, input is dropped.  Frames must be PIL images.  A prefill
  while the previous unit has no ``</unit>`` yet counts a dangling unit.
* ``streaming_generate``: the same keys every time; ``current_time`` is 1-based; the first
  ``force_listen_count`` calls after ``prepare`` listen; listening is blocked while a turn is
  open; listen units carry 24,000 zeros; non-final speaking units exactly 24,000 samples
  (front-padded); the end-of-turn unit any length; ``audio_waveform`` is None without a vocoder
  prompt; a ``prompt_wav_path`` other than the one given to ``prepare`` raises "Prompt changed".
  The break event is read only on entry: set then, generate returns listen, zeros,
  ``end_of_turn`` True, without ``</unit>`` (the unit stays open: the next prefill counts it
  dangling) and the turn stays open; set while generate runs, it changes nothing.
* ``set_break_event``/``clear_break_event``/``set_session_stop`` are thread-safe events.
* The "unified" flavour (``unified=True``, the demo's ``init_unified`` code): ``prepare`` feeds
  the prompt verbatim (prefix, voice, suffix); ``streaming_generate`` accepts
  ``force_listen_override``, which closes an open turn and listens; ``</unit>`` is fed by
  ``finalize_unit()``, and a prefill before it raises; the break event is ignored.

Its "brain": it speaks a turn of ``turn_units`` units after hearing speech (a unit with energy)
followed by a quiet unit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FIRST_CHUNK = 16_560
CHUNK = 16_000
OUT = 24_000
WHISPER_LIMIT = 1500
"""Encoder positions (50 per second) after which the Whisper cache resets itself."""
RESULT_KEYS = frozenset(
    {
        "is_listen", "text", "audio_waveform", "end_of_turn", "current_time", "cost_llm",
        "cost_tts_prep", "cost_tts", "cost_token2wav", "cost_all", "n_tokens", "n_tts_tokens",
    }
)  # fmt: skip


@dataclass
class FakeAudioTokenizer:
    """The vocoder (token2wav) and its live stream caches."""

    stream_cache: Any = None
    hift_cache_dict: Any = None
    cache: Any = None
    prompt_path: str | None = None


@dataclass
class FakeTTS:
    audio_tokenizer: FakeAudioTokenizer = field(default_factory=FakeAudioTokenizer)


@dataclass
class FakeDecoder:
    cache: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.cache = []


class FakeMiniCPMO:
    """The loaded model object (shared by the duplex wrapper)."""

    def __init__(self, *, unified: bool = False, turn_units: int = 3) -> None:
        self.audio_past_key_values: list[int] = []
        self.llm_past_key_values: list[int] = []
        self.token2wav_cache: dict[str, int] = {}
        self.tts = FakeTTS()
        self.session_id: str | None = None
        self.unified = unified
        self.turn_units = turn_units
        self.device = "cpu"
        self.reset_calls = 0

    def eval(self) -> FakeMiniCPMO:
        return self

    def to(self, device: str) -> FakeMiniCPMO:
        self.device = device
        return self

    def reset_session(self, reset_token2wav_cache: bool = True) -> None:
        self.reset_calls += 1
        self.audio_past_key_values = []
        self.llm_past_key_values = []
        self.session_id = None
        if reset_token2wav_cache:
            self.token2wav_cache = {}

    def as_duplex(self, device: str | None = None, **kwargs: Any) -> FakeDuplex:
        if self.unified:
            from tests.support.fake_minicpmo_unified import FakeUnifiedDuplex

            return FakeUnifiedDuplex(self, **kwargs)
        return FakeDuplex(self, **kwargs)


class FakeDuplex:
    def __init__(
        self,
        model: FakeMiniCPMO,
        *,
        force_listen_count: int = 0,
        generate_audio: bool = True,
        chunk_ms: int = 1000,
        first_chunk_ms: int = 1035,
        **ignored: Any,
    ) -> None:
        self.model = model
        self.decoder = FakeDecoder()
        self.force_listen_count = force_listen_count
        self.generate_audio = generate_audio
        self.construction_kwargs = {"force_listen_count": force_listen_count, **ignored}
        self._break = threading.Event()
        self._stop = threading.Event()
        self.prepared = False
        self.prepare_calls: list[dict[str, Any]] = []
        self.prefill_calls: list[dict[str, Any]] = []
        self.generate_calls: list[dict[str, Any]] = []
        self.contaminated: list[str] = []
        """What leaked from a previous session into the latest prepare()."""
        self.dangling_units = 0
        self._reset_streaming_state()

    # ---------------------------------------------------------------- state

    def _reset_streaming_state(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._consumed = 0
        self._pending = False
        self._open_unit = False
        self._generates = 0
        self._units = 0
        self._in_turn = False
        self._turn_left = 0
        self._heard_speech = False
        self._last_energy = 0.0

    # ---------------------------------------------------------------- events

    def set_break_event(self) -> None:
        self._break.set()

    def clear_break_event(self) -> None:
        self._break.clear()

    def set_session_stop(self) -> None:
        self._stop.set()
        self._break.set()

    def clear_session_stop(self) -> None:
        self._stop.clear()

    def is_break_set(self) -> bool:
        return self._break.is_set()

    def is_session_stop_set(self) -> bool:
        return self._stop.is_set()

    # ---------------------------------------------------------------- session

    def prepare(
        self,
        prefix_system_prompt: str | None = None,
        ref_audio: NDArray[np.float32] | None = None,
        prompt_wav_path: str | None = None,
        context_previous_marker: str = "\n\nprevious: ",
        **kwargs: Any,
    ) -> str:
        leaks = []
        if self.model.audio_past_key_values:
            leaks.append("whisper cache")
        tokenizer = self.model.tts.audio_tokenizer
        if tokenizer.stream_cache is not None or tokenizer.hift_cache_dict is not None:
            leaks.append("vocoder stream cache")
        if self.model.token2wav_cache:
            leaks.append("token2wav cache")
        self.contaminated = leaks
        self._break.clear()
        self._stop.clear()
        self._reset_streaming_state()
        self.decoder.reset()
        text = prefix_system_prompt or "Streaming Omni Conversation."
        if ref_audio is not None and not isinstance(ref_audio, np.ndarray):
            raise TypeError("ref_audio must be a numpy array")
        if prompt_wav_path is not None:
            if not Path(prompt_wav_path).is_file():
                raise FileNotFoundError(prompt_wav_path)
            if self.generate_audio:
                tokenizer.prompt_path = prompt_wav_path
                tokenizer.stream_cache = {"prompt": prompt_wav_path}
        else:
            tokenizer.prompt_path = None
        prompt = f"<|im_start|>system\n{text}"
        prompt += (
            "\n<|audio_start|>[audio embedding]<|audio_end|><|im_end|>"
            if ref_audio is not None
            else "<|im_end|>"
        )
        self.decoder.cache.extend(range(len(prompt) // 4))
        self.prepare_calls.append(
            {
                "prefix_system_prompt": prefix_system_prompt,
                "ref_audio": ref_audio,
                "prompt_wav_path": prompt_wav_path,
                **kwargs,
            }
        )
        self.prepared = True
        return prompt

    def streaming_prefill(
        self,
        audio_waveform: NDArray[np.float32] | None = None,
        frame_list: list[Any] | None = None,
        text_list: list[str] | None = None,
        max_slice_nums: int | list[int] = 1,
        batch_vision_feed: bool = False,
    ) -> dict[str, Any]:
        began = time.perf_counter()
        self.prefill_calls.append(
            {
                "samples": None if audio_waveform is None else audio_waveform.size,
                "frames": frame_list or [],
                "max_slice_nums": max_slice_nums,
            }
        )
        costs = ("vision_process", "vision_embed", "vision_feed", "audio_process", "audio_embed")
        result: dict[str, Any] = {"success": False, "reason": "", "cost_audio_feed": 0.0}
        result.update({f"cost_{name}": 0.0 for name in costs})
        result["cost_all"] = 0.0
        if self._breaks() or self._stop.is_set():
            result["reason"] = "break"
            return result
        if audio_waveform is None and not frame_list and not text_list:
            result["reason"] = "no input"
            return result
        if not self.prepared:
            raise RuntimeError("prepare() was not called")
        if self._open_unit:
            self.dangling_units += 1
        self._open_unit = True
        self.decoder.cache.append(-1)  # <unit>
        for frame in frame_list or []:
            if not hasattr(frame, "size") or not hasattr(frame, "convert"):
                raise TypeError("frames must be PIL images")
            self.decoder.cache.extend([-2] * 64)
        if audio_waveform is not None:
            if audio_waveform.dtype != np.float32 or audio_waveform.ndim != 1:
                raise TypeError("audio_waveform must be 1-D float32")
            self._buffer = np.concatenate([self._buffer, audio_waveform])
            need = FIRST_CHUNK if self._consumed == 0 else CHUNK
            if self._consumed == 0 and self._buffer.size < FIRST_CHUNK:
                self._buffer = np.concatenate(
                    [np.zeros(FIRST_CHUNK - self._buffer.size, np.float32), self._buffer]
                )
            if self._buffer.size < need:
                result["reason"] = (
                    f"audio not enough: need {need} samples, only {self._buffer.size}"
                )
                return result
            chunk, self._buffer = self._buffer[:need], self._buffer[need:]
            self._consumed += need
            self._last_energy = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
            whisper = self.model.audio_past_key_values
            whisper.extend([0] * 50)
            if len(whisper) >= WHISPER_LIMIT:
                self.model.audio_past_key_values = []
            self.decoder.cache.extend([-3] * 10)
        self._pending = True
        result["success"] = True
        result["cost_all"] = time.perf_counter() - began
        return result

    def streaming_generate(
        self,
        prompt_wav_path: str | None = None,
        max_new_speak_tokens_per_chunk: int = 20,
        decode_mode: str = "sampling",
        temperature: float = 0.7,
        top_k: int = 100,
        top_p: float = 0.8,
        listen_prob_scale: float = 1.0,
        listen_top_k: int | None = None,
        text_repetition_penalty: float = 1.05,
        text_repetition_window_size: int = 512,
        **extra: Any,
    ) -> dict[str, Any]:
        self.generate_calls.append(
            {
                "prompt_wav_path": prompt_wav_path,
                "max_new_speak_tokens_per_chunk": max_new_speak_tokens_per_chunk,
                "decode_mode": decode_mode,
                "temperature": temperature,
                "top_k": top_k,
                "top_p": top_p,
                "listen_prob_scale": listen_prob_scale,
                "text_repetition_penalty": text_repetition_penalty,
                "text_repetition_window_size": text_repetition_window_size,
                **extra,
            }
        )
        self._check_extra(extra)
        tokenizer = self.model.tts.audio_tokenizer
        if prompt_wav_path is not None and prompt_wav_path != tokenizer.prompt_path:
            raise ValueError("Prompt changed")
        if self._breaks() or self._stop.is_set():
            return self._result(True, "", np.zeros(OUT, np.float32), True)
        if not self._pending:
            return self._result(True, "", np.zeros(OUT, np.float32), False)
        self._pending = False
        self._close_unit()
        self._units += 1
        self._generates += 1
        if extra.get("force_listen_override") and self._in_turn:
            self._in_turn = False
            self._turn_left = 0
            tokenizer.stream_cache = (
                {"prompt": tokenizer.prompt_path} if tokenizer.prompt_path else None
            )
            self.decoder.cache.append(-9)  # <|turn_eos|>
            return self._result(True, "", np.zeros(OUT, np.float32), False)
        if self._generates <= self.force_listen_count:
            self._note_heard()
            return self._result(True, "", np.zeros(OUT, np.float32), False)
        if not self._in_turn:
            loud = self._last_energy > 0.01
            if loud:
                self._heard_speech = True
                return self._result(True, "", np.zeros(OUT, np.float32), False)
            if not self._heard_speech:
                return self._result(True, "", np.zeros(OUT, np.float32), False)
            self._heard_speech = False
            self._in_turn = True
            self._turn_left = self.model.turn_units
        # Speaking: listening is blocked until the turn ends.
        self._turn_left -= 1
        last = self._turn_left <= 0
        word = f"word{self._units} "
        self.decoder.cache.extend([-4] * 5)
        audio = self._speech(last)
        if last:
            self._in_turn = False
            tokenizer.hift_cache_dict = None
        else:
            tokenizer.hift_cache_dict = {"unit": self._units}
        self.model.token2wav_cache["last"] = self._units
        return self._result(False, word, audio, last)

    def _breaks(self) -> bool:
        return self._break.is_set()

    def _close_unit(self) -> None:
        self.decoder.cache.append(-5)  # </unit>
        self._open_unit = False

    def _check_extra(self, extra: dict[str, Any]) -> None:
        unknown = set(extra) - {"force_listen_override"}
        if unknown or (extra and not self.model.unified):
            raise TypeError(
                f"streaming_generate() got an unexpected keyword argument {sorted(extra)[0]!r}"
            )

    def _note_heard(self) -> None:
        if self._last_energy > 0.01:
            self._heard_speech = True

    def _speech(self, last: bool) -> NDArray[np.float32] | None:
        if not self.generate_audio or self.model.tts.audio_tokenizer.prompt_path is None:
            return None
        length = 13_000 if last else 20_000
        t = np.arange(length) / OUT
        tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        if last:
            return tone
        return np.concatenate([np.zeros(OUT - length, np.float32), tone])

    def _result(
        self, listen: bool, text: str, audio: NDArray[np.float32] | None, end: bool
    ) -> dict[str, Any]:
        return {
            "is_listen": listen,
            "text": text,
            "audio_waveform": audio,
            "end_of_turn": end,
            "current_time": self._units,
            "cost_llm": 0.012,
            "cost_tts_prep": 0.001,
            "cost_tts": 0.004 if not listen else 0.0,
            "cost_token2wav": 0.006 if not listen else 0.0,
            "cost_all": 0.025,
            "n_tokens": len(text.split()) + 1,
            "n_tts_tokens": 25 if not listen else 0,
        }

    def as_simplex(
        self, reset_session: bool = True, reset_token2wav_cache: bool = False
    ) -> FakeMiniCPMO:
        if reset_session:
            self.model.reset_session(reset_token2wav_cache=reset_token2wav_cache)
        return self.model

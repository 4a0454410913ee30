"""One call's session on a MiniCPM-o duplex replica: our units in, the model's decisions out.

Per unit: ``streaming_prefill`` with the unit's audio (the first unit is sent as 1035 ms, as
the model's streaming front end expects, by putting 35 ms of silence in front) and frames,
then ``streaming_generate`` with every sampling setting (upstream ignores the ones given at
construction), then, for the unified variant, ``finalize_unit`` (it feeds the unit's end to the
model; without it the next prefill raises).  The result is mapped to a ``StepResult``.

The system prompt goes into the chat template the official worker uses
(``<|im_start|>system\n{text}\n<|audio_start|>`` voice ``<|audio_end|><|im_end|>``) for the
variants whose ``prepare`` feeds it verbatim.

Barge-in (``interrupt``, from any thread) never uses upstream's break event (see
``omni.minicpmo.variants`` for why): the unit in flight is dropped (returned as listening), and
then, per variant, either the next generate gets ``force_listen_override`` (unified: upstream
closes the turn) or the rest of the interrupted turn is muted: stepped, so the model keeps
hearing, but not played, until the model ends it, for at most ``interrupt_mute_units`` units.

A turn the model ends inside a unit and then listens in the same unit comes back from upstream
as a plain listen (no ``end_of_turn``): the session reports the end of the turn on it.

``close`` runs the full cleanup that upstream's own ``prepare`` does not: the duplex state and
decoder, the vocoder's stream caches, the model session (Whisper cache, token2wav cache), then
frees GPU memory, so the next call on this replica starts clean.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import Frame, Language, SessionConfig, StepResult, Unit
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.frames import HD_SLICES, to_images
from omni.minicpmo.loader import Loaded, free_device_memory
from omni.minicpmo.variants import SYSTEM_PREFIX, SYSTEM_SUFFIX, TRAITS, Barge

log = logging.getLogger(__name__)

FIRST_UNIT_SAMPLES = 16_560
"""The released duplex front end wants 1035 ms for its first chunk (the demo variants are built
with 1030 ms: ``variants.FIRST_CHUNK_MS``)."""
_COSTS = ("cost_llm", "cost_tts_prep", "cost_tts", "cost_token2wav", "cost_all")


def full_cleanup(loaded: Loaded) -> list[str]:
    """Reset everything a session leaves on the shared model; returns what was reset."""
    duplex, model = loaded.duplex, loaded.model
    done: list[str] = []
    if hasattr(duplex, "set_session_stop"):
        duplex.set_session_stop()
        done.append("session stop")
    if hasattr(duplex, "_reset_streaming_state"):
        duplex._reset_streaming_state()
        done.append("duplex state")
    decoder = getattr(duplex, "decoder", None)
    if decoder is not None and hasattr(decoder, "reset"):
        decoder.reset()
        done.append("decoder KV")
    tokenizer = getattr(getattr(model, "tts", None), "audio_tokenizer", None)
    if tokenizer is not None:
        for name in ("stream_cache", "hift_cache_dict", "cache"):
            if hasattr(tokenizer, name):
                setattr(tokenizer, name, None)
        done.append("vocoder caches")
    if hasattr(model, "reset_session"):
        model.reset_session(reset_token2wav_cache=True)
        done.append("model session")
    free_device_memory(loaded.device)
    return done


class MiniCPMOSession:
    def __init__(
        self,
        loaded: Loaded,
        config: MiniCPMOConfig,
        session: SessionConfig,
        voice_path: str | None,
        voice: NDArray[np.float32] | None,
    ) -> None:
        self._loaded = loaded
        self._duplex = loaded.duplex
        self._traits = TRAITS[loaded.variant]
        self._config = config
        self._voice_path = voice_path
        self._interrupted = threading.Event()
        self._force_next = False
        self._muted = 0
        self._units = 0
        self._speaking = False
        self._closed = False
        self.cleanup_steps: list[str] = []
        prompt = session.instructions or (
            config.system_prompt_zh if session.language is Language.ZH else config.system_prompt_en
        )
        self._duplex.prepare(**self._prompt(prompt, voice), prompt_wav_path=voice_path)

    # ------------------------------------------------------------------ contract

    def step(self, unit: Unit) -> StepResult:
        self._take_interrupt()
        audio = unit.audio.astype(np.float32, copy=False)
        if self._units == 0:
            pad = np.zeros(self._traits.first_unit_samples - audio.size, dtype=np.float32)
            audio = np.concatenate([pad, audio])
        self._units += 1
        began = time.perf_counter()
        prefill = self._duplex.streaming_prefill(
            audio_waveform=audio,
            frame_list=self._images(unit.frames),
            max_slice_nums=HD_SLICES if self._config.hd else 1,
            batch_vision_feed=False,
        )
        prefill_ms = (time.perf_counter() - began) * 1000
        if not prefill.get("success", False):
            # Never generate after a failed prefill: upstream would close a unit that has no
            # audio (a stop or break event set by someone else, or too little audio).
            log.warning("prefill refused unit %d: %s", unit.index, prefill.get("reason"))
            return StepResult(listen=True, timings={"prefill": prefill_ms})
        try:
            result = self._duplex.streaming_generate(
                prompt_wav_path=self._voice_path, **self._sampling()
            )
        finally:
            if self._traits.finalize and getattr(self._duplex, "needs_finalize", True):
                self._duplex.finalize_unit()
        if self._take_interrupt():
            # The barge-in came while this unit was in flight: what it said is stale.
            self._speaking = False
            return StepResult(listen=True, timings=self._timings(result, prefill_ms))
        return self._map(result, prefill_ms)

    def interrupt(self) -> None:
        # Only a flag: upstream's break event would leave a unit open (see variants.py).
        self._interrupted.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cleanup_steps = full_cleanup(self._loaded)

    # ------------------------------------------------------------------ mapping

    def _take_interrupt(self) -> bool:
        """Arm this variant's barge-in if one came; returns whether one did."""
        if not self._interrupted.is_set():
            return False
        self._interrupted.clear()
        if self._traits.barge is Barge.FORCE_LISTEN:
            self._force_next = True
        else:
            self._muted = self._config.interrupt_mute_units
        return True

    def _prompt(self, text: str, voice: NDArray[np.float32] | None) -> dict[str, Any]:
        if self._traits.wraps_prompt:
            return {"prefix_system_prompt": text, "ref_audio": voice}
        if voice is None:
            prefix, suffix = f"<|im_start|>system\n{text}", "<|im_end|>"
        else:
            prefix, suffix = SYSTEM_PREFIX.format(text=text), SYSTEM_SUFFIX
        return {"prefix_system_prompt": prefix, "suffix_system_prompt": suffix, "ref_audio": voice}

    def _sampling(self) -> dict[str, Any]:
        config = self._config
        kwargs: dict[str, Any] = {
            "max_new_speak_tokens_per_chunk": config.max_new_speak_tokens_per_chunk,
            "decode_mode": "sampling",
            "temperature": config.temperature,
            "top_k": config.top_k,
            "top_p": config.top_p,
            "listen_prob_scale": config.listen_prob_scale,
            "text_repetition_penalty": config.text_repetition_penalty,
            "text_repetition_window_size": config.text_repetition_window_size,
        }
        if self._force_next:
            kwargs["force_listen_override"] = True
            self._force_next = False
        return kwargs

    def _images(self, frames: tuple[Frame, ...]) -> list[Any] | None:
        if not frames:
            return None
        return to_images(frames, self._config.high_refresh, self._config.hd)

    @staticmethod
    def _timings(result: dict[str, Any], prefill_ms: float) -> dict[str, float]:
        timings = {"prefill": prefill_ms}
        for key in _COSTS:
            value = result.get(key)
            if isinstance(value, (int, float)):
                timings[key.removeprefix("cost_")] = float(value) * 1000
        return timings

    def _map(self, result: dict[str, Any], prefill_ms: float) -> StepResult:
        timings = self._timings(result, prefill_ms)
        listen = bool(result.get("is_listen", True))
        end = bool(result.get("end_of_turn", False))
        was_speaking, self._speaking = self._speaking, not listen and not end
        if self._muted:
            if listen or end:
                self._muted = 0
            else:
                self._muted -= 1
            return StepResult(listen=True, timings=timings)
        if listen:
            # Upstream drops end_of_turn when the turn ended inside a unit that then listened.
            return StepResult(listen=True, end_of_turn=was_speaking, timings=timings)
        waveform = result.get("audio_waveform")
        audio = None
        if waveform is not None:
            audio = np.asarray(waveform, dtype=np.float32).reshape(-1)
        return StepResult(
            listen=False,
            text=str(result.get("text") or ""),
            audio=audio,
            end_of_turn=end,
            timings=timings,
        )

"""One call's session on a MiniCPM-o duplex replica: our units in, the model's decisions out.

Per unit: ``streaming_prefill`` with the unit's audio (the first unit is sent as 1035 ms, as
the model's streaming front end expects, by putting 35 ms of silence in front) and frames,
then ``streaming_generate`` with every sampling setting (upstream ignores the ones given at
construction), mapped to a ``StepResult``.

Barge-in: the model cannot yield mid-turn (listening is blocked until its turn ends), and its
break event only freezes it.  ``interrupt`` sets the break (the unit in flight stops), the next
unit clears it, and then: where the build takes ``force_listen_override`` the turn is closed
and the model listens; elsewhere the rest of the interrupted turn is muted (stepped, so the
model keeps hearing, but not played) until the model ends it, for at most
``interrupt_mute_units`` units.

``close`` runs the full cleanup that upstream's own ``prepare`` does not: the duplex state and
decoder, the vocoder's stream caches, the model session (Whisper cache, token2wav cache), then
frees GPU memory, so the next call on this replica starts clean.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import Frame, Language, SessionConfig, StepResult, Unit
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.frames import to_images
from omni.minicpmo.loader import Loaded, free_device_memory

log = logging.getLogger(__name__)

FIRST_UNIT_SAMPLES = 16_560
"""The duplex streaming front end wants 1035 ms for its first chunk."""
_COSTS = ("cost_llm", "cost_tts_prep", "cost_tts", "cost_token2wav", "cost_all")


def supports_force_listen(duplex: Any) -> bool:
    try:
        parameters = inspect.signature(duplex.streaming_generate).parameters
    except (TypeError, ValueError):
        return False
    return "force_listen_override" in parameters


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
        self._config = config
        self._voice_path = voice_path
        self._interrupted = threading.Event()
        self._force_listen = supports_force_listen(self._duplex)
        self._force_next = False
        self._muted = 0
        self._units = 0
        self._closed = False
        self.cleanup_steps: list[str] = []
        prompt = session.instructions or (
            config.system_prompt_zh if session.language is Language.ZH else config.system_prompt_en
        )
        self._duplex.prepare(
            prefix_system_prompt=prompt,
            ref_audio=voice,
            prompt_wav_path=voice_path,
        )

    # ------------------------------------------------------------------ contract

    def step(self, unit: Unit) -> StepResult:
        if self._interrupted.is_set():
            self._interrupted.clear()
            self._duplex.clear_break_event()
            if self._force_listen:
                self._force_next = True
            else:
                self._muted = self._config.interrupt_mute_units
        audio = unit.audio.astype(np.float32, copy=False)
        if self._units == 0:
            pad = np.zeros(FIRST_UNIT_SAMPLES - audio.size, dtype=np.float32)
            audio = np.concatenate([pad, audio])
        self._units += 1
        began = time.perf_counter()
        prefill = self._duplex.streaming_prefill(
            audio_waveform=audio,
            frame_list=self._images(unit.frames),
            max_slice_nums=2 if self._config.hd else 1,
            batch_vision_feed=False,
        )
        prefill_ms = (time.perf_counter() - began) * 1000
        if not prefill.get("success", False):
            # Never generate after a failed prefill: upstream would close a unit that has no
            # audio.  A break (barge-in in flight) is the usual reason.
            if not self._duplex.is_break_set():
                log.warning("prefill refused unit %d: %s", unit.index, prefill.get("reason"))
            return StepResult(listen=True, timings={"prefill": prefill_ms})
        result = self._duplex.streaming_generate(
            prompt_wav_path=self._voice_path, **self._sampling()
        )
        return self._map(result, prefill_ms)

    def interrupt(self) -> None:
        # Break first: the replica thread clears the break only after it sees the flag.
        self._duplex.set_break_event()
        self._interrupted.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cleanup_steps = full_cleanup(self._loaded)

    # ------------------------------------------------------------------ mapping

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
        return to_images(frames, self._config.high_refresh)

    def _map(self, result: dict[str, Any], prefill_ms: float) -> StepResult:
        timings = {"prefill": prefill_ms}
        for key in _COSTS:
            value = result.get(key)
            if isinstance(value, (int, float)):
                timings[key.removeprefix("cost_")] = float(value) * 1000
        listen = bool(result.get("is_listen", True))
        end = bool(result.get("end_of_turn", False))
        if self._muted:
            if listen or end:
                self._muted = 0
            else:
                self._muted -= 1
            return StepResult(listen=True, timings=timings)
        if listen:
            return StepResult(listen=True, end_of_turn=False, timings=timings)
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

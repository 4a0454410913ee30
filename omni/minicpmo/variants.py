"""The three shapes MiniCPM-o 4.5's remote code comes in, and how each is driven.

All three hold the same duplex methods (``prepare``, ``streaming_prefill``,
``streaming_generate``, the break and stop events) over the same model; they differ in how the
duplex object is made and in four behaviours the adapter must follow:

=============  ====================================  ==========================================
variant        how the duplex object is made         what differs
=============  ====================================  ==========================================
as_duplex      ``model.as_duplex(**settings)``       the Hugging Face release: ``prepare`` wraps
               (the released model's code)           the system prompt itself
duplex_class   ``MiniCPMODuplex`` of the model's     ``prepare`` feeds the prompt verbatim (we
               module, built around the model we     wrap it in the chat template); its
               loaded (its constructor would load    constructor casts to bfloat16 (we cast
               a second copy; we hand it ours)       back to the configured dtype)
unified        ``model.init_unified(...)`` then      ``prepare`` verbatim; ``finalize_unit()``
               ``model.duplex``                      after every ``streaming_generate``; takes
                                                     ``force_listen_override``; ignores breaks
=============  ====================================  ==========================================

Barge-in: in as_duplex and duplex_class the break event is read only on entry to prefill and to
generate, so a break set while a unit is in flight either does nothing (during generate) or makes
generate return before ``</unit>`` (during prefill), leaving an unclosed unit in the KV cache;
and the model cannot leave a turn early (``<|listen|>`` is replaced while its turn is open).
Those two are therefore never given the break event: the session mutes the rest of the turn
(``Barge.MUTE``).  The unified variant ignores the break event altogether and closes the turn
when ``streaming_generate`` gets ``force_listen_override=True`` (``Barge.FORCE_LISTEN``).
In both, the unit that was in flight when the barge-in came is dropped.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from omni.api import EngineUnavailable
from omni.minicpmo.config import MiniCPMOConfig

log = logging.getLogger(__name__)


class Variant(StrEnum):
    AS_DUPLEX = "as_duplex"
    DUPLEX_CLASS = "duplex_class"
    UNIFIED = "unified"


class Barge(StrEnum):
    MUTE = "mute"
    """Units of the interrupted turn are stepped (the model keeps hearing) but not played."""
    FORCE_LISTEN = "force_listen"
    """The next generate gets force_listen_override: upstream closes the turn and listens."""


@dataclass(frozen=True, slots=True)
class Traits:
    wraps_prompt: bool
    """prepare() puts the system prompt in the chat template itself."""
    finalize: bool
    """finalize_unit() must follow every streaming_generate (else the next prefill raises)."""
    barge: Barge
    first_unit_samples: int
    """Samples the first prefill is given (our first unit with silence in front)."""


FIRST_CHUNK_MS = 1030
"""The first chunk the demo variants are built with.  Their mel front end rounds the first
chunk down to whole 10 ms hops (1035 ms -> 1030 ms) but pads its buffer up to the configured
length, so the default 1035 ms leaves 80 samples (5 ms) behind for good: every later unit is
then fed 5 ms late.  1030 ms is what the model hears either way, with nothing left behind."""
TRAITS: Mapping[Variant, Traits] = {
    Variant.AS_DUPLEX: Traits(
        wraps_prompt=True, finalize=False, barge=Barge.MUTE, first_unit_samples=16_560
    ),
    Variant.DUPLEX_CLASS: Traits(
        wraps_prompt=False, finalize=False, barge=Barge.MUTE, first_unit_samples=16_480
    ),
    Variant.UNIFIED: Traits(
        wraps_prompt=False, finalize=True, barge=Barge.FORCE_LISTEN, first_unit_samples=16_480
    ),
}

SYSTEM_PREFIX = "<|im_start|>system\n{text}\n<|audio_start|>"
SYSTEM_SUFFIX = "<|audio_end|><|im_end|>"
"""The chat template the official demo worker puts around the prompt and the voice embedding."""
TOKEN2WAV_ASSETS = "assets/token2wav"

_construct_lock = threading.Lock()


def detect(model: Any) -> Variant:
    """Which variant the loaded model's code is, or EngineUnavailable saying what is needed."""
    if hasattr(model, "as_duplex"):
        return Variant.AS_DUPLEX
    if hasattr(model, "init_unified"):
        return Variant.UNIFIED
    if hasattr(_module_of(model), "MiniCPMODuplex"):
        return Variant.DUPLEX_CLASS
    raise EngineUnavailable(
        f"the model code ({type(model).__module__}) offers no duplex mode: MiniCPM-o 4.5's "
        "remote code with as_duplex(), init_unified() or a MiniCPMODuplex class is needed "
        "(the model folder's config.json auto_map names the modeling file used)"
    )


def make_duplex(model: Any, variant: Variant, config: MiniCPMOConfig, device: str) -> Any:
    """The duplex object of ``model`` (already loaded, on ``device``), never a second copy."""
    settings: dict[str, Any] = {
        "force_listen_count": config.force_listen_count,
        "generate_audio": True,
        "sliding_window_mode": config.sliding_window,
        "ls_mode": "explicit",
    }
    if variant is Variant.AS_DUPLEX:
        # as_duplex() initialises the streaming TTS itself (init_tts), so it is not called twice.
        duplex = model.as_duplex(**settings)
    elif variant is Variant.UNIFIED:
        _require_token2wav(model, config)
        settings["first_chunk_ms"] = FIRST_CHUNK_MS
        model.init_unified(duplex_config=settings, device=device, chat_vocoder="token2wav")
        modes = getattr(_module_of(model), "ProcessorMode", None)
        if modes is not None and hasattr(model, "set_mode"):
            model.set_mode(modes.DUPLEX)
        duplex = model.duplex
    else:
        _require_token2wav(model, config)
        settings["first_chunk_ms"] = FIRST_CHUNK_MS
        duplex = _wrap_loaded(model, config, device, settings)
    retarget_listen_bias(duplex)
    return duplex


def retarget_listen_bias(duplex: Any) -> bool:
    """Make listen_prob_scale act on ``<|listen|>``.

    Upstream's decoder scales the logit of ``tokenizer.eos_token_id``, which is ``<|im_end|>``,
    not ``<|listen|>``: the knob changed nothing the duplex loop looks at.  Point it at the
    listen token (the id the duplex object itself compares against).  Returns whether it did.
    """
    decoder = getattr(duplex, "decoder", None)
    listen = getattr(duplex, "listen_token_id", None)
    if decoder is None or not isinstance(listen, int) or not hasattr(decoder, "listen_id"):
        return False
    if decoder.listen_id != listen:
        log.info("listen_prob_scale: from token %s to <|listen|> (%d)", decoder.listen_id, listen)
        decoder.listen_id = listen
    return True


def _module_of(model: Any) -> Any:
    try:
        return importlib.import_module(type(model).__module__)
    except ImportError:
        return None


def _require_token2wav(model: Any, config: MiniCPMOConfig) -> None:
    """The unified and duplex_class code load the vocoder from <model>/assets/token2wav (the
    unified one downloads it from the hub when missing: only with allow_download)."""
    folder = Path(str(getattr(model.config, "_name_or_path", "")))
    if folder.is_dir() and not (folder / TOKEN2WAV_ASSETS).is_dir() and not config.allow_download:
        raise EngineUnavailable(
            f"{folder / TOKEN2WAV_ASSETS} is missing (the streaming vocoder's weights): copy the "
            "model repository's assets/ folder there, or set engine.minicpmo.allow_download = true"
        )


class _Preloaded:
    """Stands in for the module's MiniCPMO class while MiniCPMODuplex is constructed, so that
    its ``MiniCPMO.from_pretrained(...)`` returns the model we already loaded."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        return self._model


def _wrap_loaded(model: Any, config: MiniCPMOConfig, device: str, settings: dict[str, Any]) -> Any:
    import torch

    module = _module_of(model)
    source = str(model.config._name_or_path)
    with _construct_lock:
        original = module.MiniCPMO
        module.MiniCPMO = _Preloaded(model)
        try:
            duplex = module.MiniCPMODuplex(
                source, device=device, attn_implementation=config.attn_implementation, **settings
            )
        finally:
            module.MiniCPMO = original
    if duplex.model is not model:
        raise EngineUnavailable("MiniCPMODuplex did not take the loaded model: unknown code")
    if config.dtype != "bfloat16":
        # Its constructor casts the model to bfloat16 whatever was asked for.
        model.to(dtype=getattr(torch, config.dtype))
    return duplex

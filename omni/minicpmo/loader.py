"""Loads MiniCPM-o 4.5 the standard way and switches it to duplex mode.

``from_pretrained(..., trust_remote_code=True)`` from a Hugging Face id or a local folder, on
the configured device (never an unconditional ``.cuda()``), then ``as_duplex(...)``.  Every
way this can fail on a user's machine gets a message that says what to do.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni.api import EngineUnavailable
from omni.minicpmo.config import MiniCPMOConfig

log = logging.getLogger(__name__)

TRANSFORMERS_RANGE = ((4, 51, 0), (4, 53, 0))
"""The model's remote code needs transformers >= 4.51 and < 4.53."""
INSTALL_HINT = "install the engine's pinned dependencies: pip install -e '.[minicpmo]'"


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model copy on one device and its duplex wrapper (they share the weights)."""

    model: Any
    duplex: Any
    device: str


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_dependencies() -> None:
    """Raise EngineUnavailable unless torch and a suitable transformers are installed."""
    missing = [n for n in ("torch", "transformers", "PIL") if importlib.util.find_spec(n) is None]
    if missing:
        raise EngineUnavailable(f"the minicpmo engine needs {', '.join(missing)}: {INSTALL_HINT}")
    import transformers

    low, high = TRANSFORMERS_RANGE
    have = _version(transformers.__version__)
    if not low <= have < high:
        raise EngineUnavailable(
            "the minicpmo engine needs transformers >=4.51,<4.53 "
            f"(found {transformers.__version__}): {INSTALL_HINT}"
        )
    if have < (4, 51, 1) and importlib.util.find_spec("accelerate") is None:
        raise EngineUnavailable(f"transformers 4.51.0 needs accelerate installed: {INSTALL_HINT}")


def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise EngineUnavailable(
            f"device {device} was asked for but CUDA is not available "
            "(no NVIDIA GPU, driver or CUDA build of torch); use the lite engine on this machine"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise EngineUnavailable(
            f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
        )


def model_source(config: MiniCPMOConfig) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only)."""
    path = Path(config.model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EngineUnavailable(f"{path} has no config.json: it is not a model folder")
        return str(path), True
    if config.model.startswith((".", "/", "~")):
        raise EngineUnavailable(f"model folder {config.model} does not exist")
    return config.model, not config.allow_download


def weights_present(config: MiniCPMOConfig) -> bool:
    """Whether the weights can be had without downloading (a folder, or the HF cache)."""
    path = Path(config.model).expanduser()
    if path.exists():
        return (path / "config.json").is_file()
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(config.model, "config.json"), str)


def available(config: MiniCPMOConfig) -> tuple[bool, str]:
    """Whether this machine can run the engine now, and why not."""
    try:
        check_dependencies()
        check_device(config.devices[0])
    except EngineUnavailable as exc:
        return False, str(exc)
    if not (weights_present(config) or config.allow_download):
        return False, f"the weights of {config.model} are not on this machine"
    return True, ""


def load(config: MiniCPMOConfig, device: str) -> Loaded:
    """Load one model copy on ``device`` and switch it to duplex mode."""
    check_dependencies()
    check_device(device)
    source, local_only = model_source(config)
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(
            source,
            trust_remote_code=True,
            attn_implementation=config.attn_implementation,
            torch_dtype=getattr(torch, config.dtype),
            init_vision=True,
            init_audio=True,
            init_tts=True,
            local_files_only=local_only,
        )
    except OSError as exc:
        hint = (
            "set engine.minicpmo.allow_download = true to fetch them, "
            "or point engine.minicpmo.model at a folder holding them"
            if local_only
            else "check the model id and your network"
        )
        raise EngineUnavailable(
            f"cannot load the weights of {config.model}: {exc}; {hint}"
        ) from None
    model = model.eval().to(device)
    if config.compile and hasattr(model, "llm"):
        model.llm = torch.compile(model.llm)
    # as_duplex() initialises the streaming TTS itself (init_tts), so it is not called twice.
    duplex = model.as_duplex(
        force_listen_count=config.force_listen_count,
        generate_audio=True,
        sliding_window_mode=config.sliding_window,
        ls_mode="explicit",
    )
    log.info("MiniCPM-o loaded on %s", device)
    return Loaded(model=model, duplex=duplex, device=device)


def free_device_memory(device: str) -> None:
    """Return cached GPU memory to the driver (after a session's cleanup)."""
    import gc

    gc.collect()
    if device != "cpu" and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""Loads MiniCPM-o 4.5 the standard way and switches it to duplex mode.

``from_pretrained(..., trust_remote_code=True)`` from a Hugging Face id or a local folder, on
the configured device (never an unconditional ``.cuda()``), then the duplex object of whichever
variant the remote code is (``omni.minicpmo.variants``).  Every way this can fail on a user's
machine gets a message that says what to do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni.api import EngineUnavailable
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.variants import Variant, detect, make_duplex

log = logging.getLogger(__name__)

TRANSFORMERS_RANGE = ((4, 51, 0), (4, 52, 0))
"""The model's remote code needs transformers 4.51.x: 4.52 fails inside from_pretrained
('Resampler' object has no attribute '_initialize_weights')."""
TRANSFORMERS_PIN = ">=4.51,<4.52"
INSTALL_HINT = "install the engine's pinned dependencies: pip install -e '.[minicpmo]'"


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model copy on one device and its duplex wrapper (they share the weights)."""

    model: Any
    duplex: Any
    device: str
    variant: Variant = Variant.AS_DUPLEX


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
            f"the minicpmo engine needs transformers {TRANSFORMERS_PIN} "
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
        with remote_code_imports():
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
    variant = detect(model)
    with remote_code_imports():
        duplex = make_duplex(model, variant, config, device)
    log.info("MiniCPM-o loaded on %s (%s)", device, variant)
    return Loaded(model=model, duplex=duplex, device=device, variant=variant)


_shim_lock = threading.Lock()
_shim_users: dict[str, int] = {"loads": 0}


@contextmanager
def remote_code_imports() -> Iterator[None]:
    """Let transformers accept the model code while it is loaded.

    transformers refuses remote code unless every module it names in an import is importable,
    and the model file imports ``flag_gems`` (FlagGems kernels) under
    ``if os.getenv("USE_FLAGOS") == "1"``.  Where flag_gems is not installed and USE_FLAGOS is
    not 1 that import never runs: a placeholder module (any attribute access raises) stands in
    for it during the check, and is removed afterwards.
    """
    if _flag_gems_installed():
        yield
        return
    if os.environ.get("USE_FLAGOS") == "1":
        raise EngineUnavailable(
            "USE_FLAGOS=1 makes the model code import flag_gems, which is not installed: "
            "install FlagGems or unset USE_FLAGOS"
        )
    with _shim_lock:
        if _shim_users["loads"] == 0:
            sys.modules["flag_gems"] = _FlagGemsPlaceholder("flag_gems")
        _shim_users["loads"] += 1
    try:
        yield
    finally:
        with _shim_lock:
            _shim_users["loads"] -= 1
            if _shim_users["loads"] == 0 and isinstance(
                sys.modules.get("flag_gems"), _FlagGemsPlaceholder
            ):
                del sys.modules["flag_gems"]


def _flag_gems_installed() -> bool:
    present = sys.modules.get("flag_gems")
    if present is not None:
        return not isinstance(present, _FlagGemsPlaceholder)
    return importlib.util.find_spec("flag_gems") is not None


class _FlagGemsPlaceholder(types.ModuleType):
    """omnirtc's stand-in for flag_gems during transformers' import check (not FlagGems)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"flag_gems is not installed (omnirtc placeholder; asked for {name})")


def free_device_memory(device: str) -> None:
    """Return cached GPU memory to the driver (after a session's cleanup)."""
    import gc

    gc.collect()
    if device != "cpu" and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""What the upstream tests share: the model code folder, tiny models built from it, replicas.

The tests run when OMNIRTC_MINICPMO_CODE points at a copy of the model's remote code (the
``MiniCPMO45/`` folder of OpenBMB/MiniCPM-o-Demo; never committed here) and torch and
transformers 4.51.x are installed; elsewhere they skip and say why.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.engine import MiniCPMOEngine, MiniCPMOReplica

CODE_ENV = "OMNIRTC_MINICPMO_CODE"
VARIANTS = ("duplex_class", "unified")


def why_not() -> str | None:
    """Why the upstream tests cannot run here (None when they can)."""
    code = os.environ.get(CODE_ENV, "")
    if not code:
        return f"set {CODE_ENV} to the model's code folder (MiniCPMO45/ of OpenBMB/MiniCPM-o-Demo)"
    if not (Path(code) / "modeling_minicpmo.py").is_file():
        return f"{CODE_ENV}={code} holds no modeling_minicpmo.py"
    for name in ("torch", "transformers", "librosa", "soundfile"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (see README: the minicpmo extra)"
    from omni.api import EngineUnavailable
    from omni.minicpmo.loader import check_dependencies

    try:
        check_dependencies()
    except EngineUnavailable as exc:
        return str(exc)
    return None


def code_folder() -> Path:
    why = why_not()
    if why:
        pytest.skip(why)
    return Path(os.environ[CODE_ENV])


def build_model(code: Path, dest: Path, variant: str) -> Path:
    from tests.support import cpu_token2wav, tiny_minicpmo

    cpu_token2wav.install()
    return tiny_minicpmo.build(code, dest, variant)


def tiny_config(model: Path, voice: Path, **changes: object) -> MiniCPMOConfig:
    values: dict[str, object] = {
        "model": str(model),
        "devices": ("cpu",),
        "dtype": "float32",
        "voice": str(voice),
        "force_listen_count": 3,
    }
    values.update(changes)
    return MiniCPMOConfig(**values)  # type: ignore[arg-type]


def warm_replica(config: MiniCPMOConfig) -> MiniCPMOReplica:
    from tests.support import cpu_token2wav

    cpu_token2wav.install()
    replica = MiniCPMOEngine(config).create_replica(0)
    replica.warmup()
    return replica

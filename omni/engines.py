"""Builds an engine by name; heavy engines are imported only when chosen."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni.api import Engine
from omni.echo import EchoConfig, EchoEngine


@dataclass(frozen=True, slots=True)
class EngineConfigs:
    echo: EchoConfig = field(default_factory=EchoConfig)


def build_engine(name: str, replicas: int, configs: EngineConfigs) -> Engine:
    if replicas < 1:
        raise ValueError("an engine needs at least one replica")
    if name == "echo":
        return EchoEngine(configs.echo, replicas)
    raise ValueError(f"unknown engine {name!r}")

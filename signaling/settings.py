"""Settings: read once at start from a TOML file and ``OMNIRTC_*`` environment variables.

Precedence, lowest first: the defaults in code (which ``configs/default.toml`` documents, one
comment per setting), the TOML file, the environment, then command-line flags.  Environment
names are ``OMNIRTC_<SECTION>__<KEY>``, e.g. ``OMNIRTC_SERVER__PORT=9000`` or
``OMNIRTC_ENGINE__ECHO__MAX_UTTERANCE_S=5``; values are JSON when they parse as JSON
(numbers, booleans, lists), strings otherwise.  This is the only module that reads the
environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from omni.api import require
from omni.echo import EchoConfig
from omni.engines import ENGINE_NAMES, EngineConfigs
from omni.lite.config import LiteConfig
from omni.llamacpp.config import LlamaCppConfig
from omni.minicpmo.config import MiniCPMOConfig
from realtime.config import CallConfig, PeerConfig
from realtime.recording import RecordingConfig

ENV_PREFIX = "OMNIRTC_"


class SettingsError(ValueError):
    """Settings that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 6 * 1024 * 1024
    max_calls: int = 10
    web_dir: str = ""
    """Folder of the call page; empty = the web/ folder next to the packages."""
    cors_origins: tuple[str, ...] = ()
    """Origins of other sites' pages that may call the API and import /static/ (CORS);
    empty = the call page's own origin only; ``("*",)`` = any origin."""
    header_timeout_s: float = 10.0
    """A connection's request line and headers must arrive within this many seconds of
    the connection opening or of its previous response (also the keep-alive idle time)."""
    body_timeout_s: float = 60.0
    """A request body must arrive within this many seconds of its headers."""
    max_connections: int = 1024
    """Open HTTP connections at most; at the limit the oldest connection that has not sent
    complete request headers is closed to admit a new one."""
    max_header_bytes: int = 8190
    """Longest request line, and longest header field (name and value)."""

    def __post_init__(self) -> None:
        require(0 <= self.port <= 65535, "port must be 0..65535")
        require(
            1024 <= self.max_body_bytes <= 16 * 1024 * 1024,
            "max_body_bytes must be 1 KiB..16 MiB",
        )
        require(1 <= self.max_calls <= 1000, "max_calls must be 1..1000")
        for origin in self.cors_origins:
            require(
                origin == "*" or _is_origin(origin),
                "cors_origins holds origins like https://app.example.com or "
                f"http://localhost:3000 (scheme, host, optional port; no path): not {origin!r}",
            )
        require(
            "*" not in self.cors_origins or len(self.cors_origins) == 1,
            'cors_origins: "*" allows every origin; list it alone',
        )
        require(0.1 <= self.header_timeout_s <= 600, "header_timeout_s must be 0.1..600")
        require(0.1 <= self.body_timeout_s <= 3600, "body_timeout_s must be 0.1..3600")
        require(8 <= self.max_connections <= 1_000_000, "max_connections must be 8..1000000")
        require(1024 <= self.max_header_bytes <= 65536, "max_header_bytes must be 1024..65536")


def _is_origin(text: str) -> bool:
    """Whether ``text`` is a serialized origin: ``scheme://host[:port]``, nothing more."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    return (
        bool(parts.scheme and parts.hostname)
        and text == f"{parts.scheme}://{parts.netloc}"
        and "@" not in parts.netloc
        and (port is None or parts.netloc.endswith(f":{port}"))
    )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    name: str = "auto"
    replicas: int = 0
    """Model replicas (engine calls served at once); 0 = the engine's default."""
    max_queue: int = 4
    """Calls that may wait for a free replica; more are refused with 503."""
    echo: EchoConfig = field(default_factory=EchoConfig)
    lite: LiteConfig = field(default_factory=LiteConfig)
    minicpmo: MiniCPMOConfig = field(default_factory=MiniCPMOConfig)
    llamacpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)

    def configs(self) -> EngineConfigs:
        """Every engine's settings, as omni.engines.build_engine takes them."""
        return EngineConfigs(
            echo=self.echo, lite=self.lite, minicpmo=self.minicpmo, llamacpp=self.llamacpp
        )

    def __post_init__(self) -> None:
        require(self.name in ENGINE_NAMES, f"name must be one of {', '.join(ENGINE_NAMES)}")
        require(0 <= self.replicas <= 64, "replicas must be 0..64")
        require(0 <= self.max_queue <= 1000, "max_queue must be 0..1000")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    json: bool = False

    def __post_init__(self) -> None:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        require(self.level.upper() in levels, f"level must be one of {', '.join(levels)}")


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    webrtc: PeerConfig = field(default_factory=PeerConfig)
    call: CallConfig = field(default_factory=CallConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    recording: RecordingConfig = field(default_factory=RecordingConfig)


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and ``overrides`` ("section.key")."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            keys = name[len(ENV_PREFIX) :].lower().split("__")
            value = _parse_env_value(raw)
            if _field_type(Settings, keys) is str and not isinstance(value, str):
                value = raw  # a string setting takes the text as it is ("2024", "true")
            _set_path(data, keys, value, source=name)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted.split("."), value, source=f"--{dotted.split('.')[-1]}")
    _check_keys(Settings, data, "")
    try:
        return TypeAdapter(Settings).validate_python(data, strict=False)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _field_type(cls: type, keys: list[str]) -> object:
    """The declared type of the setting at ``keys`` (None when there is no such setting)."""
    kind: object = cls
    for key in keys:
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            return None
        hints = typing.get_type_hints(kind)
        if key not in hints:
            return None
        kind = hints[key]
    return kind


def _set_path(data: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{source}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _check_keys(cls: type, data: Any, prefix: str) -> None:
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    known = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in known:
            raise SettingsError(
                f"unknown setting {where!r}; known here: {', '.join(sorted(known))}"
            )
        kind = known[key]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            _check_keys(kind, value, where + ".")
        elif typing.get_origin(kind) in (tuple, types.UnionType) and isinstance(value, list):
            for arg in typing.get_args(kind):
                if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                    for item in value:
                        _check_keys(arg, item, where + "[].")


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "value_error":
            # Our own checks name the field first ("port must be ..."): prefix its section.
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where}.{message}" if where else message)
        else:
            lines.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "invalid settings:\n  " + "\n  ".join(lines)

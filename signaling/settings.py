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
from omni.engines import EngineSettings
from realtime.config import CallConfig, PeerConfig
from realtime.recording import RecordingConfig
from realtime.ws_call import WsConfig
from signaling.cluster.config import ClusterSettings

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
    tls_cert: str = ""
    """PEM certificate (chain) file: serve HTTPS (with ``tls_key``)."""
    tls_key: str = ""
    """PEM private key file of ``tls_cert``."""
    tls_self_signed: bool = False
    """Serve HTTPS with a certificate made at start for this machine (browsers warn once)."""
    gc_freeze: bool = True
    """Freeze the heap once the engine has warmed up (``signaling.gc_policy``)."""

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
        require(
            bool(self.tls_cert) == bool(self.tls_key),
            "tls_cert and tls_key go together: set both or neither",
        )
        require(
            not (self.tls_self_signed and self.tls_cert),
            "tls_self_signed makes its own certificate: do not also set tls_cert",
        )

    @property
    def tls(self) -> bool:
        """Whether the server speaks HTTPS."""
        return bool(self.tls_cert) or self.tls_self_signed


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
class ApiKey:
    name: str
    """Who holds the key (in logs and call ownership; never the key itself)."""
    key: str
    """The secret, sent as ``Authorization: Bearer <key>``."""
    max_calls: int = 0
    """Calls this key may have at once; 0 = only the server's limit."""

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "api_keys[].name must not be empty")
        require(len(self.key) >= 16, f"api_keys[{self.name}].key must be at least 16 characters")
        require(0 <= self.max_calls <= 1000, "api_keys[].max_calls must be 0..1000")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    api_keys: tuple[ApiKey, ...] = ()
    """Keys that may call; none = auth off (anyone who reaches the port may call)."""
    token_ttl_s: float = 120.0
    """Lifetime of a call token minted by ``POST /v1/tokens``."""
    token_secret: str = ""
    """HMAC secret that signs tokens; empty = random at each start."""

    def __post_init__(self) -> None:
        names = [k.name for k in self.api_keys]
        require(len(set(names)) == len(names), "api_keys: each key needs its own name")
        keys = [k.key for k in self.api_keys]
        require(len(set(keys)) == len(keys), "api_keys: two entries share a key")
        require(5 <= self.token_ttl_s <= 86_400, "token_ttl_s must be 5..86400")


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
    auth: AuthSettings = field(default_factory=AuthSettings)
    realtime_ws: WsConfig = field(default_factory=WsConfig)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)  # issue 10
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

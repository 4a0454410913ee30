"""Settings: defaults, TOML, environment, command line, errors, and configs/default.toml."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from omni.echo import EchoConfig
from omni.lite.config import LiteConfig
from omni.llamacpp.config import LlamaCppConfig
from omni.minicpmo.config import MiniCPMOConfig
from realtime.config import CallConfig, IceServer, PeerConfig, VadConfig
from realtime.recording import RecordingConfig
from realtime.ws_call import WsConfig
from signaling.cluster.config import ClusterSettings
from signaling.settings import (
    AuthSettings,
    EngineSettings,
    LoggingSettings,
    ServerSettings,
    Settings,
    SettingsError,
    load_settings,
)

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "configs" / "default.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults


def test_defaults_without_file_env_or_flags() -> None:
    settings = load_settings(None, environ={})
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.engine.name == "auto"
    assert settings.call.vad == VadConfig()
    assert settings.engine.echo == EchoConfig()
    assert settings.webrtc.ice_servers == ()


def test_replicas_default_to_the_engines_choice() -> None:
    assert Settings().engine.replicas == 0
    settings = load_settings(None, environ={}, overrides={"engine.replicas": 2})
    assert settings.engine.replicas == 2


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- sources


def test_toml_file_sets_values_in_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9000
host = "0.0.0.0"

[webrtc]
ice_servers = [{urls = ["stun:stun.example.org:3478"]},
               {urls = ["turn:t.example.org"], username = "u", credential = "p"}]
host_addresses = ["10.0.0.2"]

[call]
unit_grace_ms = 200

[call.vad]
stop_ms = 300

[engine]
replicas = 3

[engine.echo]
max_utterance_s = 5.0

[logging]
json = true
""",
    )
    settings = load_settings(path, environ={})
    assert (settings.server.port, settings.server.host) == (9000, "0.0.0.0")
    assert settings.webrtc.ice_servers == (
        IceServer(urls=("stun:stun.example.org:3478",)),
        IceServer(urls=("turn:t.example.org",), username="u", credential="p"),
    )
    assert settings.webrtc.host_addresses == ("10.0.0.2",)
    assert settings.call.unit_grace_ms == 200
    assert settings.call.vad == VadConfig(stop_ms=300)
    assert settings.engine.replicas == 3
    assert settings.engine.echo == EchoConfig(max_utterance_s=5.0)
    assert settings.logging.json is True
    # What the file does not mention keeps its default.
    assert settings.server.max_calls == ServerSettings().max_calls
    assert settings.call.max_pending_units == CallConfig().max_pending_units


def test_env_overrides_with_json_values() -> None:
    settings = load_settings(
        None,
        environ={
            "OMNIRTC_SERVER__PORT": "9001",
            "OMNIRTC_SERVER__HOST": "0.0.0.0",
            "OMNIRTC_LOGGING__JSON": "true",
            "OMNIRTC_WEBRTC__HOST_ADDRESSES": '["127.0.0.1", "10.0.0.1"]',
            "OMNIRTC_WEBRTC__ICE_SERVERS": '[{"urls": ["stun:s.example.org"]}]',
            "OMNIRTC_ENGINE__ECHO__MAX_UTTERANCE_S": "5",
            "OMNIRTC_CALL__VAD__AGGRESSIVENESS": "3",
            "OMNIRTC_LOGGING__LEVEL": '"DEBUG"',
        },
    )
    assert settings.server.port == 9001
    assert settings.server.host == "0.0.0.0"
    assert settings.logging.json is True
    assert settings.logging.level == "DEBUG"
    assert settings.webrtc.host_addresses == ("127.0.0.1", "10.0.0.1")
    assert settings.webrtc.ice_servers == (IceServer(urls=("stun:s.example.org",)),)
    assert settings.engine.echo.max_utterance_s == 5.0
    assert settings.call.vad.aggressiveness == 3


def test_env_names_without_the_prefix_or_a_section_are_ignored() -> None:
    settings = load_settings(
        None,
        environ={
            "SERVER__PORT": "1",
            "OMNIRTC_CONFIG": "/nowhere.toml",
            "OTHER_SERVER__PORT": "2",
            "PATH": "/bin",
        },
    )
    assert settings == Settings()


def test_env_names_are_case_insensitive_after_the_prefix() -> None:
    settings = load_settings(None, environ={"OMNIRTC_server__Port": "9002"})
    assert settings.server.port == 9002


def test_the_process_environment_is_read_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNIRTC_SERVER__PORT", "9444")
    assert load_settings().server.port == 9444
    assert load_settings(environ={}).server.port == 8080


def test_precedence_defaults_file_env_then_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9000\nhost = "10.0.0.1"\nmax_calls = 5\n[engine]\nreplicas = 2\n',
    )
    env = {"OMNIRTC_SERVER__PORT": "9001", "OMNIRTC_SERVER__HOST": "10.0.0.2"}
    settings = load_settings(path, environ=env, overrides={"server.port": 9002})
    assert settings.server.port == 9002, "command line beats env and file"
    assert settings.server.host == "10.0.0.2", "env beats file"
    assert settings.server.max_calls == 5, "file beats defaults"
    assert settings.engine.replicas == 2
    assert settings.server.max_body_bytes == ServerSettings().max_body_bytes


def test_command_line_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    settings = load_settings(
        path,
        environ={"OMNIRTC_SERVER__HOST": "10.0.0.2"},
        overrides={"server.host": None, "server.port": None, "engine.name": None},
    )
    assert (settings.server.host, settings.server.port) == ("10.0.0.2", 9000)
    assert settings.engine.name == "auto"


def test_nested_overrides_from_the_command_line() -> None:
    settings = load_settings(
        None, environ={}, overrides={"engine.echo.min_speech_ms": 500, "call.vad.stop_ms": 900}
    )
    assert settings.engine.echo.min_speech_ms == 500
    assert settings.call.vad.stop_ms == 900


# ---------------------------------------------------------------- errors


def _error(**kwargs: typing.Any) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(SettingsError) as info:
        load_settings(kwargs.pop("path", None), **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    message = _error(path=write(tmp_path, "[server]\nprot = 9000\n"))
    assert "unknown setting 'server.prot'" in message
    assert "port" in message, "it lists the known keys"


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    message = _error(path=write(tmp_path, "[sever]\nport = 9000\n"))
    assert "unknown setting 'sever'" in message
    assert "server" in message


def test_unknown_nested_key_is_an_error(tmp_path: Path) -> None:
    message = _error(path=write(tmp_path, "[engine.echo]\nmax_utterance = 3.0\n"))
    assert "unknown setting 'engine.echo.max_utterance'" in message
    assert "max_utterance_s" in message


def test_unknown_key_inside_an_ice_server_is_an_error() -> None:
    message = _error(overrides={"webrtc.ice_servers": [{"url": ["stun:x"]}]})
    assert "webrtc.ice_servers[].url" in message
    assert "urls" in message


def test_unknown_key_from_the_environment_is_an_error() -> None:
    message = _error(environ={"OMNIRTC_CALL__GRACE_MS": "100"})
    assert "unknown setting 'call.grace_ms'" in message


def test_unknown_key_from_the_command_line_is_an_error() -> None:
    assert "unknown setting 'server.nope'" in _error(overrides={"server.nope": 1})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"server.port": 70000}, "server.port must be 0..65535"),
        ({"server.max_calls": 0}, "server.max_calls must be 1..1000"),
        ({"server.max_body_bytes": 10}, "server.max_body_bytes"),
        ({"engine.name": "gpt"}, "engine.name must be one of auto, echo, lite"),
        ({"engine.replicas": 99}, "engine.replicas must be 0..64"),
        ({"logging.level": "LOUD"}, "logging.level must be one of"),
        ({"call.max_pending_units": 0}, "call.max_pending_units must be 1..10"),
        ({"call.vad.start_ms": 5}, "call.vad.start_ms must be 20..300"),
        ({"call.playout_max_ms": 100}, "call.playout_max_ms must be 200..60000"),
        ({"webrtc.connect_timeout_s": 0}, "webrtc.connect_timeout_s must be > 0"),
        ({"webrtc.udp_ports": [40100]}, "webrtc.udp_ports must be [] or [low, high]"),
        ({"webrtc.udp_ports": [40100, 40000]}, "webrtc.udp_ports must be [] or [low, high]"),
        ({"webrtc.udp_ports": [80, 90]}, "webrtc.udp_ports must be [] or [low, high]"),
        ({"webrtc.announced_address": "my.host"}, "webrtc.announced_address must be an IP"),
        ({"server.cors_origins": ["https://a.example/"]}, "server.cors_origins holds origins"),
        ({"server.cors_origins": ["a.example"]}, "server.cors_origins holds origins"),
        ({"server.cors_origins": ["null"]}, "server.cors_origins holds origins"),
        ({"server.cors_origins": ["https://u@a.example"]}, "server.cors_origins holds origins"),
        ({"server.cors_origins": ["*", "https://a.example"]}, "list it alone"),
        ({"server.header_timeout_s": 0}, "server.header_timeout_s must be 0.1..600"),
        ({"server.body_timeout_s": 0}, "server.body_timeout_s must be 0.1..3600"),
        ({"server.max_connections": 2}, "server.max_connections must be 8..1000000"),
        ({"server.max_header_bytes": 100}, "server.max_header_bytes must be 1024..65536"),
        ({"engine.echo.max_utterance_s": 100}, "engine.echo.max_utterance_s must be 0.5..60"),
        (
            {"webrtc.ice_servers": [{"urls": ["stun:ok"]}, {"urls": ["http://x"]}]},
            "webrtc.ice_servers.1.urls must start with stun:, turn: or turns: (not 'http://x')",
        ),
        ({"webrtc.ice_servers": [{"urls": []}]}, "webrtc.ice_servers.0.urls must hold"),
    ],
)
def test_bad_values_name_the_setting_and_the_rule(
    overrides: dict[str, object], expected: str
) -> None:
    message = _error(overrides=overrides)
    assert message.startswith("invalid settings:")
    assert expected in message


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"server.port": "abc"}, "server.port"),
        ({"call.unit_grace_ms": [1]}, "call.unit_grace_ms"),
        ({"webrtc.host_addresses": 5}, "webrtc.host_addresses"),
        ({"call.vad": 5}, "call.vad"),
    ],
)
def test_wrong_types_name_the_setting(overrides: dict[str, object], where: str) -> None:
    message = _error(overrides=overrides)
    assert f"{where}:" in message


def test_several_bad_values_are_all_reported() -> None:
    message = _error(overrides={"server.port": -1, "engine.replicas": -1})
    assert "server.port" in message and "engine.replicas" in message


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("webrtc.connect_timeout_s", 0),
        ("call.vad.start_ms", 5),
        ("engine.echo.min_speech_ms", 1),
    ],
)
def test_value_errors_use_the_full_setting_name(setting: str, value: object) -> None:
    assert setting in _error(overrides={setting: value})


def test_bad_env_value_names_the_setting() -> None:
    message = _error(environ={"OMNIRTC_SERVER__PORT": "ninety"})
    assert "server.port:" in message


def test_a_value_where_a_section_is_expected_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    message = _error(path=path, environ={"OMNIRTC_SERVER__PORT__X": "1"})
    assert "OMNIRTC_SERVER__PORT__X" in message
    assert "port is not a section" in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    message = _error(path=tmp_path / "absent.toml")
    assert "cannot read settings file" in message
    assert "absent.toml" in message


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    message = _error(path=write(tmp_path, "[server\nport = \n"))
    assert "is not valid TOML" in message


def test_section_given_as_a_plain_value_is_an_error(tmp_path: Path) -> None:
    message = _error(path=write(tmp_path, "server = 5\n"))
    assert "server:" in message


# ---------------------------------------------------------------- configs/default.toml


def test_default_toml_loads_to_exactly_the_defaults() -> None:
    assert load_settings(DEFAULT_TOML, environ={}) == Settings()


def _documented_keys(text: str) -> dict[tuple[str, str], bool]:
    """(table, key) -> whether the line just above the key is a comment."""
    keys: dict[tuple[str, str], bool] = {}
    table = ""
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"\[([A-Za-z0-9_.]+)\]", stripped)
        if header:
            table = header.group(1)
        else:
            key = re.match(r"([A-Za-z0-9_]+)\s*=", stripped)
            if key and not line.startswith((" ", "\t")):
                keys[(table, key.group(1))] = previous.startswith("#")
        if stripped:
            previous = stripped
    return keys


def _setting_keys(cls: type, table: str) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.extend(_setting_keys(kind, f"{table}.{f.name}" if table else f.name))
        else:
            out.append((table, f.name))
    return out


def test_the_section_helpers_cover_every_settings_class() -> None:
    keys = _setting_keys(Settings, "")
    sections = {table for table, _ in keys}
    assert sections == {
        "server",
        "webrtc",
        "call",
        "call.vad",
        "engine",
        "engine.echo",
        "engine.lite",
        "engine.minicpmo",
        "engine.llamacpp",
        "auth",
        "realtime_ws",
        "logging",
        "cluster",
        "recording",
    }
    assert (
        len(keys)
        == sum(
            len(dataclasses.fields(c))
            for c in (
                ServerSettings,
                PeerConfig,
                CallConfig,
                VadConfig,
                LoggingSettings,
                AuthSettings,
                EchoConfig,
                LiteConfig,
                MiniCPMOConfig,
                LlamaCppConfig,
                ClusterSettings,
                RecordingConfig,
                WsConfig,
            )
        )
        + len(dataclasses.fields(EngineSettings))
        - 5
    )  # call.vad, engine.echo, engine.lite, engine.minicpmo and engine.llamacpp are tables


def test_default_toml_documents_every_setting_with_a_comment() -> None:
    documented = _documented_keys(DEFAULT_TOML.read_text(encoding="utf-8"))
    missing = [f"{t}.{k}" for t, k in _setting_keys(Settings, "") if (t, k) not in documented]
    assert missing == [], f"settings missing from configs/default.toml: {missing}"
    uncommented = [f"{t}.{k}" for (t, k), commented in documented.items() if not commented]
    assert uncommented == [], f"settings without a comment line above: {uncommented}"
    extra = set(documented) - set(_setting_keys(Settings, ""))
    assert extra == set()


def test_the_documentation_check_notices_a_missing_comment() -> None:
    text = '[server]\n# Port.\nport = 1\nhost = "x"\n\n[call.vad]\n# Mode.\naggressiveness = 2\n'
    assert _documented_keys(text) == {
        ("server", "port"): True,
        ("server", "host"): False,
        ("call.vad", "aggressiveness"): True,
    }


def test_a_string_setting_from_the_environment_is_taken_as_is() -> None:
    settings = load_settings(None, environ={"OMNIRTC_SERVER__WEB_DIR": "2024"})
    assert settings.server.web_dir == "2024"


def test_cors_origins_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "OMNIRTC_SERVER__CORS_ORIGINS": '["https://app.example.com", "http://localhost:3000"]'
        },
    )
    assert settings.server.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert load_settings(None, environ={}).server.cors_origins == ()

"""Building the llamacpp engine over the fake llama.cpp-omni server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from omni.api import INPUT_RATE, SessionConfig
from omni.llamacpp.config import LlamaCppConfig
from omni.llamacpp.engine import LlamaCppReplica, llamacpp_engine
from omni.llamacpp.session import LlamaCppSession
from omni.minicpmo.voice import write_wav
from tests.support.fake_llamacpp import FakeLlamaCppServer, make_model_dir
from tests.support.media import speechlike


@pytest.fixture
def fake() -> Iterator[FakeLlamaCppServer]:
    server = FakeLlamaCppServer().start()
    try:
        yield server
    finally:
        server.stop()


def config(folder: Path, url: str, **changes: Any) -> LlamaCppConfig:
    model = make_model_dir(folder / "gguf")
    voice = write_wav(folder / "voice.wav", speechlike(2.0, rate=INPUT_RATE, seed=21))
    base = LlamaCppConfig(
        servers=(url,),
        shared_dir=str(folder / "shared"),
        model_dir=str(model),
        voice=str(voice),
        force_listen_count=0,
        connect_timeout_s=1.0,
        request_timeout_s=5.0,
        decode_timeout_s=5.0,
        startup_timeout_s=5.0,
    )
    return replace(base, **changes)


def replica(folder: Path, server: FakeLlamaCppServer, **changes: Any) -> LlamaCppReplica:
    engine = llamacpp_engine(config(folder, server.url, **changes))
    rep = engine.create_replica(0)
    assert isinstance(rep, LlamaCppReplica)
    rep.warmup()
    return rep


def session(rep: LlamaCppReplica, settings: SessionConfig | None = None) -> LlamaCppSession:
    opened = rep.open_session(settings or SessionConfig())
    assert isinstance(opened, LlamaCppSession)
    return opened

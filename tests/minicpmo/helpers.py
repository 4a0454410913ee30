"""Building the minicpmo engine over the contract fake."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, UNIT_SAMPLES, Frame, SessionConfig, StepResult, Unit
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.engine import MiniCPMOEngine, MiniCPMOReplica
from omni.minicpmo.loader import Loaded
from omni.minicpmo.session import MiniCPMOSession
from omni.minicpmo.variants import Variant
from omni.minicpmo.voice import write_wav
from tests.support.fake_minicpmo import FakeDuplex, FakeMiniCPMO
from tests.support.media import speechlike


class FakeLoader:
    """Stands in for loader.load: one FakeMiniCPMO per replica, duplexed the same way."""

    def __init__(self, **model_kwargs: Any) -> None:
        self.model_kwargs = model_kwargs
        self.loaded: list[Loaded] = []

    def __call__(self, config: MiniCPMOConfig, device: str) -> Loaded:
        model = FakeMiniCPMO(**self.model_kwargs).eval().to(device)
        duplex = model.as_duplex(force_listen_count=config.force_listen_count, generate_audio=True)
        variant = Variant.UNIFIED if model.unified else Variant.AS_DUPLEX
        loaded = Loaded(model=model, duplex=duplex, device=device, variant=variant)
        self.loaded.append(loaded)
        return loaded


def voice_file(folder: Path) -> Path:
    return write_wav(folder / "voice.wav", speechlike(3.0, rate=INPUT_RATE, seed=21))


def config(folder: Path, **changes: Any) -> MiniCPMOConfig:
    return replace(MiniCPMOConfig(devices=("cpu",), voice=str(voice_file(folder))), **changes)


def replica(
    folder: Path, loader: FakeLoader | None = None, **changes: Any
) -> tuple[MiniCPMOReplica, FakeLoader]:
    loader = loader or FakeLoader()
    engine = MiniCPMOEngine(config(folder, **changes), loader=loader)
    rep = engine.create_replica(0)
    rep.warmup()
    return rep, loader


def duplex_of(loader: FakeLoader, index: int = 0) -> FakeDuplex:
    duplex = loader.loaded[index].duplex
    assert isinstance(duplex, FakeDuplex)
    return duplex


def session(rep: MiniCPMOReplica, config: SessionConfig | None = None) -> MiniCPMOSession:
    opened = rep.open_session(config or SessionConfig())
    assert isinstance(opened, MiniCPMOSession)
    return opened


def unit(
    index: int, audio: NDArray[np.float32] | None = None, frames: tuple[Frame, ...] = ()
) -> Unit:
    samples = np.zeros(UNIT_SAMPLES, np.float32) if audio is None else audio
    return Unit(index=index, start_ms=index * 1000, audio=samples, frames=frames)


def talk_then_quiet(talk_units: int, quiet_units: int, seed: int = 1) -> list[NDArray[np.float32]]:
    if not talk_units:
        return [np.zeros(UNIT_SAMPLES, np.float32)] * quiet_units
    speech = speechlike(float(talk_units), rate=INPUT_RATE, seed=seed)
    chunks = [speech[i * UNIT_SAMPLES : (i + 1) * UNIT_SAMPLES] for i in range(talk_units)]
    return chunks + [np.zeros(UNIT_SAMPLES, np.float32)] * quiet_units


def run(
    sess: MiniCPMOSession, chunks: list[NDArray[np.float32]], start: int = 0
) -> list[StepResult]:
    return [sess.step(unit(start + i, c)) for i, c in enumerate(chunks)]

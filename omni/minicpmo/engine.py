"""The ``minicpmo`` engine: one model copy per replica, each on its own device and thread."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from omni.api import (
    MAX_FRAME_SIDE,
    UNIT_SAMPLES,
    DuplexSession,
    EngineInfo,
    EngineUnavailable,
    SessionConfig,
    Unit,
)
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.frames import HD_FRAME_SIDE
from omni.minicpmo.loader import Loaded, free_device_memory, load
from omni.minicpmo.session import MiniCPMOSession, full_cleanup
from omni.minicpmo.voice import find_default_voice, read_wav, write_wav

log = logging.getLogger(__name__)

Loader = Callable[[MiniCPMOConfig, str], Loaded]
_WARMUP_UNITS = 4


def model_folder(loaded: Loaded, config: MiniCPMOConfig) -> Path | None:
    path = Path(config.model).expanduser()
    if path.is_dir():
        return path
    name = getattr(getattr(loaded.model, "config", None), "_name_or_path", "")
    return Path(name) if name and Path(name).is_dir() else None


class MiniCPMOReplica:
    def __init__(self, config: MiniCPMOConfig, device: str, loader: Loader) -> None:
        self._config = config
        self.device = device
        self._loader = loader
        self._loaded: Loaded | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="omnirtc-minicpmo-"))
        self._voice_path: Path | None = None
        self._voice: np.ndarray | None = None
        self._calls = 0

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            raise EngineUnavailable("the replica has not been warmed up")
        return self._loaded

    def warmup(self) -> None:
        began = time.perf_counter()
        self._loaded = self._loader(self._config, self.device)
        source = find_default_voice(self._config.voice, model_folder(self._loaded, self._config))
        self._voice = read_wav(source)
        self._voice_path = write_wav(self._dir / "default-voice.wav", self._voice)
        session = self.open_session(SessionConfig())
        try:
            for index in range(_WARMUP_UNITS):
                session.step(
                    Unit(
                        index=index, start_ms=index * 1000, audio=np.zeros(UNIT_SAMPLES, np.float32)
                    )
                )
        finally:
            session.close()
        log.info(
            "MiniCPM-o replica on %s ready in %.1f s", self.device, time.perf_counter() - began
        )

    def open_session(self, config: SessionConfig) -> DuplexSession:
        voice_path, voice = self._voice_path, self._voice
        if config.voice is not None:
            self._calls += 1
            voice = config.voice
            voice_path = write_wav(self._dir / f"voice-{self._calls % 4}.wav", voice)
        return MiniCPMOSession(
            self.loaded,
            self._config,
            config,
            str(voice_path) if voice_path else None,
            voice,
        )

    def shutdown(self) -> None:
        if self._loaded is not None:
            full_cleanup(self._loaded)
            device = self._loaded.device
            self._loaded = None
            free_device_memory(device)
        shutil.rmtree(self._dir, ignore_errors=True)


class MiniCPMOEngine:
    def __init__(self, config: MiniCPMOConfig, loader: Loader = load) -> None:
        self._config = config
        self._loader = loader
        self._info = EngineInfo(
            name="minicpmo",
            description="MiniCPM-o 4.5 full duplex (GPU)",
            replicas=len(config.devices) * config.replicas_per_device,
            frame_side=HD_FRAME_SIDE if config.hd else MAX_FRAME_SIDE,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def frame_side(self) -> int:
        """Long side of the frames this engine can use: HD slices frames up to 1280 px."""
        return self._info.frame_side

    def create_replica(self, index: int) -> MiniCPMOReplica:
        device = self._config.devices[index // self._config.replicas_per_device]
        return MiniCPMOReplica(self._config, device, self._loader)

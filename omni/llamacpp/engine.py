"""The ``llamacpp`` engine: one replica per llama.cpp-omni server, each on its own thread.

Warm-up checks the server answers (waiting while it loads its model), initialises it for
duplex speech with ``omni_init`` (which loads the audio, vision, TTS and vocoder models: seconds
to a minute), checks that the server and omnirtc see one shared folder both ways, and runs a
short silent session.  A session starts with ``update_session_config``, which empties the
server's caches and prefills the system prompt with the reference voice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from omni.api import (
    MAX_FRAME_SIDE,
    UNIT_SAMPLES,
    DuplexSession,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    Frame,
    ReplicaEngine,
    SessionConfig,
    Unit,
)
from omni.llamacpp.client import OmniClient, ServerError, ServerUnreachable
from omni.llamacpp.config import LlamaCppConfig
from omni.llamacpp.files import ReplicaFiles
from omni.llamacpp.session import MEDIA_AUDIO, MEDIA_OMNI, LlamaCppSession
from omni.minicpmo.voice import read_wav, write_wav

log = logging.getLogger(__name__)

_WARMUP_UNITS = 2
_OUTPUT_VISIBLE_S = 5.0
_VOICE_SLOTS = 4


def how_to_start(url: str) -> str:
    """What to run so that a server answers at ``url``."""
    port = urlsplit(url).port or 8080
    return (
        "start one in a llama.cpp-omni checkout: "
        f"build/bin/llama-server --host 127.0.0.1 --port {port} "
        "--model <gguf folder>/MiniCPM-o-4_5-Q4_K_M.gguf --ctx-size 4096 --n-gpu-layers 99 "
        "--temp 0.7 --repeat-penalty 1.05 (README: The llamacpp engine), "
        "or point engine.llamacpp.servers at a running one"
    )


class LlamaCppReplica:
    """The replica backed by the server at ``url``; every method runs on its thread.

    ``warmup`` raises EngineUnavailable (naming the URL and what to do) when the server cannot
    be reached, never finishes loading, cannot load the models, or does not share the folder."""

    def __init__(self, config: LlamaCppConfig, index: int) -> None:
        self._config = config
        self.url = config.servers[index]
        self.files = ReplicaFiles(config.shared_dir, config.server_shared_dir, self.url)
        self._client: OmniClient | None = None
        self._voice = config.server_voice
        self._keep: tuple[Path, ...] = ()
        self._calls = 0

    @property
    def client(self) -> OmniClient:
        if self._client is None:
            raise EngineUnavailable("the replica has not been warmed up")
        return self._client

    def warmup(self) -> None:
        began = time.perf_counter()
        config = self._config
        if self._client is None:
            self._client = OmniClient(
                self.url,
                connect_timeout_s=config.connect_timeout_s,
                request_timeout_s=config.request_timeout_s,
                decode_timeout_s=config.decode_timeout_s,
                init_timeout_s=config.init_timeout_s,
            )
        self._wait_until_loaded()
        if not config.model_dir:
            raise EngineUnavailable(
                "engine.llamacpp.model_dir is not set: name the MiniCPM-o 4.5 GGUF folder as the "
                f"server at {self.url} sees it (it holds audio/, vision/, tts/, token2wav-gguf/)"
            )
        self.files.prepare()
        self._voice, self._keep = self._default_voice()
        self._init_server()
        self._check_output_visible()
        session = self.open_session(SessionConfig())
        try:
            for index in range(_WARMUP_UNITS):
                session.step(self._silent_unit(index))
        except ServerError as exc:
            raise EngineUnavailable(
                f"the server at {self.url} cannot read the files omnirtc writes into "
                f"{self.files.in_dir} (as {self.files.server_path(self.files.in_dir)}): {exc}; "
                "engine.llamacpp.shared_dir and server_shared_dir must name one folder"
            ) from None
        finally:
            session.close()
        log.info(
            "llama.cpp-omni replica at %s ready in %.1f s", self.url, time.perf_counter() - began
        )

    def open_session(self, config: SessionConfig) -> DuplexSession:
        voice, keep = self._voice, self._keep
        if config.voice is not None:
            self._calls += 1
            path = write_wav(
                self.files.in_dir / f"voice-{self._calls % _VOICE_SLOTS}.wav", config.voice
            )
            voice = self.files.server_path(path)
        return LlamaCppSession(
            self.client, self._config, self.files, voice=voice, session=config, keep=keep
        )

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if not self._config.shared_dir:
            self.files.remove()

    # ------------------------------------------------------------------ warm-up steps

    def _wait_until_loaded(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        while True:
            try:
                status, message = self.client.health()
            except ServerUnreachable as exc:
                raise EngineUnavailable(
                    f"no llama.cpp-omni server answers at {self.url} ({exc}); "
                    + how_to_start(self.url)
                ) from None
            if status == 200:
                return
            if status != 503 or time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"the server at {self.url} is not ready ({status} {message})"
                    + (
                        f" after {self._config.startup_timeout_s:g} s"
                        if status == 503
                        else ": is it a llama.cpp-omni llama-server?"
                    )
                )
            time.sleep(0.5)

    def _default_voice(self) -> tuple[str, tuple[Path, ...]]:
        if not self._config.voice:
            return self._config.server_voice, ()
        source = Path(self._config.voice).expanduser()
        if not source.is_file():
            raise EngineUnavailable(f"engine.llamacpp.voice: {source} does not exist")
        path = write_wav(self.files.in_dir / "default-voice.wav", read_wav(source))
        return self.files.server_path(path), (path,)

    def _init_server(self) -> None:
        config = self._config
        model_dir = config.model_dir.rstrip("/")
        body: dict[str, object] = {
            "media_type": MEDIA_OMNI if config.vision else MEDIA_AUDIO,
            "use_tts": True,
            "duplex_mode": True,
            "model_dir": model_dir,
            "tts_bin_dir": f"{model_dir}/tts",
            "tts_gpu_layers": config.tts_gpu_layers,
            "output_dir": self.files.server_out,
            "voice_audio": self._voice,
        }
        if config.token2wav_device:
            body["token2wav_device"] = config.token2wav_device
        if config.vision_backend:
            body["vision_backend"] = config.vision_backend
        try:
            self.client.omni_init(body)
        except EngineError as exc:
            raise EngineUnavailable(
                f"the server at {self.url} could not initialise ({exc}); check "
                f"engine.llamacpp.model_dir ({model_dir}) as the server sees it"
            ) from None

    def _check_output_visible(self) -> None:
        deadline = time.monotonic() + _OUTPUT_VISIBLE_S
        while not self.files.speech_dir.is_dir():
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"the server at {self.url} writes its speech into "
                    f"{self.files.server_out}, which does not appear here as "
                    f"{self.files.out_dir}: engine.llamacpp.shared_dir and server_shared_dir "
                    "must name one folder"
                )
            time.sleep(0.05)

    def _silent_unit(self, index: int) -> Unit:
        frames: tuple[Frame, ...] = ()
        if self._config.vision:
            side = MAX_FRAME_SIDE // 2
            frames = (Frame(rgb=np.zeros((side, side, 3), np.uint8), offset_ms=0),)
        return Unit(
            index=index,
            start_ms=index * 1000,
            audio=np.zeros(UNIT_SAMPLES, np.float32),
            frames=frames,
        )


def llamacpp_engine(config: LlamaCppConfig) -> ReplicaEngine:
    """One replica per server in ``config.servers``; building it contacts no server."""
    return ReplicaEngine(
        info=EngineInfo(
            name="llamacpp",
            description="MiniCPM-o 4.5 full duplex on llama.cpp-omni",
            replicas=len(config.servers),
        ),
        make=lambda index: LlamaCppReplica(config, index),
    )

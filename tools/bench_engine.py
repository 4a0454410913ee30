"""Engine benchmark: step times, time to first audio after a turn, memory per replica.

Runs spoken questions through one replica of any engine, unit by unit, paced like a call
(one unit per second, so the engine's background work counts as it would), and prints:

  * load + warm-up time of the replica;
  * step time per unit, listening and speaking units apart, p50/p95;
  * time to first audio after the end of the person's turn: from the end of the question to
    when the first speaking unit's step returned (its audio is playable then), p50/p95;
  * GPU memory per replica (allocated after warm-up, and the peak during the run) when torch
    and CUDA are present, and the process's resident memory.

The questions are spoken by Piper when the lite engine's packages are installed, or read
from --question WAV files (16-bit, any rate).  For MiniCPM-o on a GPU:

    .venv/bin/python tools/bench_engine.py --engine minicpmo --turns 8

Without weights, on any CUDA machine: a full-size MiniCPM-o with random weights, built on the
GPU from the model's configuration (no download; the streaming vocoder is the test stand-in,
so token2wav time is not measured), from a copy of the model's code folder (MiniCPMO45/):

    .venv/bin/python tools/bench_engine.py --engine minicpmo --random-weights /path/MiniCPMO45
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
import wave
from pathlib import Path

import numpy as np
import psutil
import soxr
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.api import INPUT_RATE, OUTPUT_RATE, UNIT_SAMPLES, Engine, SessionConfig, Unit
from omni.engines import build_engine
from omni.minicpmo.voice import write_wav
from signaling.settings import Settings, load_settings
from tests.support.media import speechlike
from tools.benchlib import fmt

QUESTIONS = [
    "What is the capital of France?",
    "Can you tell me a short joke?",
    "How far away is the moon?",
    "What should I cook for dinner tonight?",
]
PAUSE_S = 6.0


def spoken_questions(files: list[Path]) -> list[NDArray[np.float32]]:
    if files:
        return [read_wav(path) for path in files]
    if importlib.util.find_spec("piper") is None:
        raise SystemExit("give --question WAV files, or install the lite extra for Piper")
    from omni.lite.tts import Voice

    voice = Voice(threads=2, speech_rate=1.0)
    voice.load()
    return [
        soxr.resample(voice.synthesize(q), OUTPUT_RATE, INPUT_RATE).astype(np.float32)
        for q in QUESTIONS
    ]


def read_wav(path: Path) -> NDArray[np.float32]:
    with wave.open(str(path), "rb") as file:
        pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
        audio = pcm.reshape(-1, file.getnchannels()).mean(axis=1).astype(np.float32) / 32768
        return soxr.resample(audio, file.getframerate(), INPUT_RATE).astype(np.float32)


def gpu_memory() -> tuple[float, float] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated() / 2**30, torch.cuda.max_memory_allocated() / 2**30


def random_weight_engine(code: Path, variant: str, settings: Settings) -> Engine:
    """The minicpmo engine over a full-size random-weight model (see the module docstring)."""
    import tempfile
    from dataclasses import replace

    from omni.minicpmo.engine import MiniCPMOEngine
    from tests.support import cpu_token2wav, tiny_minicpmo

    cpu_token2wav.install()
    folder = Path(tempfile.mkdtemp(prefix="minicpmo-random-")) / "model"
    tiny_minicpmo.build(code, folder, variant, full_size=True, weights=False)
    voice = folder / "assets" / "voice.wav"
    write_wav(voice, speechlike(3.0, rate=INPUT_RATE, seed=1))
    config = replace(settings.engine.minicpmo, model=str(folder), voice=str(voice))
    print(f"random weights, full size, {variant} variant, vocoder: CPU stand-in")
    return MiniCPMOEngine(config, loader=tiny_minicpmo.random_loader)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--question", type=Path, action="append", default=[], help="a WAV file")
    parser.add_argument("--fast", action="store_true", help="do not pace units at 1 per second")
    parser.add_argument(
        "--random-weights",
        type=Path,
        metavar="CODE_DIR",
        help="minicpmo: a full-size random-weight model made from this code folder",
    )
    parser.add_argument("--variant", default="unified", choices=("unified", "duplex_class"))
    args = parser.parse_args()
    settings = load_settings(args.config, overrides={"engine.name": args.engine})
    if args.random_weights is not None:
        engine: Engine = random_weight_engine(args.random_weights, args.variant, settings)
    else:
        engine = build_engine(dataclasses.replace(settings.engine, replicas=1), 1)
    questions = spoken_questions(args.question)
    began = time.perf_counter()
    replica = engine.create_replica(0)
    replica.warmup()
    load_s = time.perf_counter() - began
    after_warmup = gpu_memory()
    timeline: list[NDArray[np.float32]] = []
    ends: list[float] = []
    position = 1.0
    timeline.append(np.zeros(INPUT_RATE, np.float32))
    for turn in range(args.turns):
        question = questions[turn % len(questions)]
        timeline += [question, np.zeros(int(PAUSE_S * INPUT_RATE), np.float32)]
        position += question.size / INPUT_RATE
        ends.append(position)
        position += PAUSE_S
    audio = np.concatenate(timeline)
    listen_ms, speak_ms, first_audio = [], [], []
    session = replica.open_session(SessionConfig())
    next_end = 0
    waiting_since: float | None = None
    start = time.monotonic()
    try:
        for index in range(audio.size // UNIT_SAMPLES):
            if not args.fast:
                delay = start + index + 1 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            chunk = audio[index * UNIT_SAMPLES : (index + 1) * UNIT_SAMPLES]
            step_began = time.perf_counter()
            result = session.step(Unit(index=index, start_ms=index * 1000, audio=chunk))
            step = (time.perf_counter() - step_began) * 1000
            (listen_ms if result.listen else speak_ms).append(step)
            unit_end = index + 1.0
            while next_end < len(ends) and ends[next_end] <= unit_end:
                waiting_since = ends[next_end]
                next_end += 1
            if waiting_since is not None and not result.listen and result.audio is not None:
                first_audio.append((unit_end - waiting_since) * 1000 + step)
                waiting_since = None
    finally:
        session.close()
        peak = gpu_memory()
        replica.shutdown()
    rss = psutil.Process().memory_info().rss / 2**30
    seconds = audio.size / INPUT_RATE
    print(f"\nengine {engine.info.name}: {args.turns} spoken turns, {seconds:.0f} s of audio")
    print(f"{'replica load + warm-up (s)':44}{load_s:.1f}")
    print(f"{'step time, listening units (ms)':44}{fmt(listen_ms)}")
    print(f"{'step time, speaking units (ms)':44}{fmt(speak_ms)}")
    answered = f"({len(first_audio)}/{args.turns} turns answered)"
    print(f"{'end of turn -> first audio (ms)':44}{fmt(first_audio)}  {answered}")
    if after_warmup is not None and peak is not None:
        memory = f"{after_warmup[0]:.1f} after warm-up, {peak[1]:.1f} peak"
        print(f"{'GPU memory per replica (GiB)':44}{memory}")
    print(f"{'process resident memory (GiB)':44}{rss:.2f}")


if __name__ == "__main__":
    main()

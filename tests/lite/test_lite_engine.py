"""The lite engine on its own, with real models: speech in, turn, recognition, reply, speech out."""

from __future__ import annotations

import re

import numpy as np
import soxr
from numpy.typing import NDArray
from pocketsphinx import Config, Decoder

from omni.api import INPUT_RATE, OUTPUT_RATE, UNIT_SAMPLES, SessionConfig, StepResult, Unit
from omni.lite.engine import LiteReplica, LiteSession
from tests.lite.models import Speaker


def units(audio: NDArray[np.float32], start: int = 0) -> list[Unit]:
    count = -(-audio.size // UNIT_SAMPLES)
    padded = np.zeros(count * UNIT_SAMPLES, dtype=np.float32)
    padded[: audio.size] = audio
    return [
        Unit(
            index=start + i,
            start_ms=(start + i) * 1000,
            audio=padded[i * UNIT_SAMPLES : (i + 1) * UNIT_SAMPLES],
        )
        for i in range(count)
    ]


def conversation(
    question: NDArray[np.float32], lead_s: float = 0.5, tail_s: float = 6.0
) -> NDArray[np.float32]:
    lead = np.zeros(int(lead_s * INPUT_RATE), dtype=np.float32)
    tail = np.zeros(int(tail_s * INPUT_RATE), dtype=np.float32)
    return np.concatenate([lead, question, tail])


def transcribe(audio24k: NDArray[np.float32]) -> str:
    decoder = Decoder(Config(samprate=INPUT_RATE, loglevel="FATAL"))
    pcm = (np.clip(soxr.resample(audio24k, OUTPUT_RATE, INPUT_RATE), -1, 1) * 32767).astype("<i2")
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), False, True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp else ""


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def run(session: LiteSession, audio: NDArray[np.float32]) -> list[StepResult]:
    return [session.step(unit) for unit in units(audio)]


def test_a_spoken_question_gets_a_spoken_answer(replica: LiteReplica, speaker: Speaker) -> None:
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    try:
        results = run(session, conversation(speaker.say("What is the capital of France?")))
    finally:
        session.close()
    assert session.heard, "no turn was recognised"
    assert {"capital", "france"} <= words(session.heard[0]), session.heard
    speaking = [i for i, r in enumerate(results) if not r.listen]
    assert speaking, "the engine never spoke"
    first = speaking[0]
    # The question ends at 0.5 s + its length; the reply starts in the unit where the pause
    # completes (a 500 ms pause): at most two units after the speech.
    question_end_unit = int(0.5 + speaker.say("What is the capital of France?").size / INPUT_RATE)
    assert first <= question_end_unit + 2
    text = "".join(r.text for r in results)
    assert "paris" in text.lower(), text
    assert results[speaking[-1]].end_of_turn
    assert speaking == list(range(first, speaking[-1] + 1)), "speech must be contiguous"
    audio = np.concatenate([r.audio for r in results if r.audio is not None])
    assert all(r.audio is None or r.audio.size <= OUTPUT_RATE for r in results)
    assert audio.size > 0.8 * OUTPUT_RATE
    heard_back = words(transcribe(audio))
    said = words(text)
    overlap = heard_back & said - {"the", "a", "is", "of"}
    assert len(overlap) >= 2, (heard_back, said)
    assert "timings" not in text
    assert results[first].timings["wait_audio"] < 3000


def test_noises_and_silence_are_not_turns(replica: LiteReplica) -> None:
    session = replica.open_session(SessionConfig())
    rng = np.random.default_rng(3)
    audio = np.zeros(4 * INPUT_RATE, dtype=np.float32)
    audio[INPUT_RATE : INPUT_RATE + 800] = 0.5 * rng.standard_normal(800).astype(np.float32)
    try:
        results = run(session, audio)
    finally:
        session.close()
    assert all(r.listen for r in results)
    assert session.heard == []


def test_an_interrupt_stops_a_long_reply_within_one_unit(
    replica: LiteReplica, speaker: Speaker
) -> None:
    session = replica.open_session(
        SessionConfig(instructions="You are a storyteller. Tell long stories.")
    )
    try:
        question = conversation(speaker.say("Tell me a long story about a dragon."), tail_s=2.0)
        results = run(session, question)
        spoke = [r for r in results if not r.listen]
        assert spoke and not spoke[-1].end_of_turn, "the reply should still be going"
        session.interrupt()
        after = [
            session.step(u) for u in units(np.zeros(3 * INPUT_RATE, np.float32), start=len(results))
        ]
    finally:
        session.close()
    assert after[0].listen
    assert after[0].audio is None
    assert all(r.listen for r in after)


def test_the_next_turn_is_answered_after_a_barge_in(replica: LiteReplica, speaker: Speaker) -> None:
    session = replica.open_session(
        SessionConfig(instructions="You are a storyteller. Tell long stories.")
    )
    try:
        results = run(
            session, conversation(speaker.say("Tell me a long story about a dragon."), tail_s=2.0)
        )
        assert any(not r.listen for r in results)
        session.interrupt()
        later = run(
            session, conversation(speaker.say("What is the capital of France?"), tail_s=5.0)
        )
    finally:
        session.close()
    assert len(session.heard) == 2
    assert {"capital", "france"} <= words(session.heard[1])
    assert any(not r.listen for r in later)

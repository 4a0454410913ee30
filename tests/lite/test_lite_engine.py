"""The lite engine on its own, with real models: speech in, turn, recognition, reply, speech out."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import soxr
from numpy.typing import NDArray
from pocketsphinx import Config, Decoder

from omni.api import (
    INPUT_RATE,
    OUTPUT_RATE,
    UNIT_SAMPLES,
    PartialUnit,
    SessionConfig,
    StepResult,
    Unit,
)
from omni.lite import engine
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


_DISTRACTORS = [
    "hello",
    "yes",
    "no",
    "maybe",
    "water",
    "garden",
    "yellow",
    "seven",
    "window",
    "music",
    "morning",
    "table",
]


def transcribe(audio24k: NDArray[np.float32], vocabulary: set[str]) -> str:
    """Recognise ``audio24k`` with a grammar of ``vocabulary`` plus distractor words.

    The full language model mishears synthetic speech now and then; a word list makes the
    check exact on real speech while silence or noise still yields nothing of the text."""
    decoder = Decoder(Config(samprate=INPUT_RATE, loglevel="FATAL"))
    known = sorted(w for w in vocabulary | set(_DISTRACTORS) if decoder.lookup_word(w))
    grammar = "#JSGF V1.0;\ngrammar reply;\npublic <s> = ( " + " | ".join(known) + " )*;\n"
    decoder.add_jsgf_string("reply", grammar)
    decoder.activate_search("reply")
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


def run_in_real_time(session: LiteSession, audio: NDArray[np.float32]) -> list[StepResult]:
    """Step once per second, as a call does (the engine works between steps)."""
    results = []
    for unit in units(audio):
        began = time.monotonic()
        results.append(session.step(unit))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    return results


def test_a_spoken_question_gets_a_spoken_answer(replica: LiteReplica, speaker: Speaker) -> None:
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    try:
        results = run_in_real_time(
            session, conversation(speaker.say("What is the capital of France?"))
        )
    finally:
        session.close()
    assert session.heard, "no turn was recognised"
    assert {"capital", "france"} <= words(session.heard[0]), session.heard
    speaking = [i for i, r in enumerate(results) if not r.listen]
    assert speaking, "the engine never spoke"
    first = speaking[0]
    # The question ends at 0.5 s + its length; the turn ends in the unit where the pause
    # completes (500 ms), and the reply (recognition, model, voice: on the reply thread while
    # the units go on) starts at most three units after the speech.
    question_end_unit = int(0.5 + speaker.say("What is the capital of France?").size / INPUT_RATE)
    assert first <= question_end_unit + 3
    assert results[first].heard == session.heard[0]
    assert all(not r.heard for i, r in enumerate(results) if i != first)
    text = "".join(r.text for r in results)
    assert "paris" in text.lower(), text
    assert results[speaking[-1]].end_of_turn
    assert speaking == list(range(first, speaking[-1] + 1)), "speech must be contiguous"
    audio = np.concatenate([r.audio for r in results if r.audio is not None])
    assert all(r.audio is None or r.audio.size <= OUTPUT_RATE for r in results)
    assert audio.size > 0.8 * OUTPUT_RATE
    said = words(text)
    heard_back = words(transcribe(audio, said))
    content = said - {"the", "a", "an", "is", "of", "to", "and"}
    assert len(heard_back & content) >= max(2, len(content) // 2), (heard_back, said)
    silence_heard = words(transcribe(np.zeros(OUTPUT_RATE, np.float32), said))
    assert not silence_heard & content
    assert "timings" not in text
    assert results[first].timings["wait_audio"] < 3000


def test_while_the_person_listens_the_model_reads_the_next_prompt(
    replica: LiteReplica, speaker: Speaker
) -> None:
    """After a reply the model reads the conversation so far, so the next question is all
    that is left to read when it comes (the turns kept shift at every reply, and the model
    keeps only the prefix its last prompt shares with the next one)."""
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    earlier = ("Which river runs through Paris?", "The Seine runs through Paris.")
    try:
        # An earlier turn, which the turn below pushes out of the prompt (one turn is kept):
        # the next prompt then shares only its head with the one the model last read.
        session._history.append(earlier)
        run_in_real_time(session, conversation(speaker.say("What is the capital of France?")))
        assert session.replies, "the question was answered"
        read_ahead = session._prime_job
        assert read_ahead is not None
        read_ahead.result(timeout=30)
        context = session._context()
        question = {"role": "user", "content": "And the capital of Italy?"}
        assert context[1]["role"] == "user", "the turn just answered is in the prompt"
        warm = replica.model.generate([*context, question], lambda _: False)
        # The same question after an earlier turn the model has not read ahead.
        unread = [
            context[0],
            {"role": "user", "content": "Which river runs through Rome?"},
            {"role": "assistant", "content": "The Tiber runs through Rome."},
        ]
        cold = replica.model.generate([*unread, question], lambda _: False)
    finally:
        session.close()
    assert warm.prompt_read is not None and cold.prompt_read is not None
    assert warm.prompt_read <= 16, f"only the question is left to read, not {warm.prompt_read}"
    assert cold.prompt_read >= warm.prompt_read + 15


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
        results = run_in_real_time(session, question)
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
        results = run_in_real_time(
            session, conversation(speaker.say("Tell me a long story about a dragon."), tail_s=2.0)
        )
        assert any(not r.listen for r in results)
        session.interrupt()
        later = run_in_real_time(
            session, conversation(speaker.say("What is the capital of France?"), tail_s=5.0)
        )
    finally:
        session.close()
    assert len(session.heard) == 2
    assert {"capital", "france"} <= words(session.heard[1])
    assert any(not r.listen for r in later)


def _ending_at(question: NDArray[np.float32], phase_s: float) -> NDArray[np.float32]:
    """``question`` placed so that it ends ``phase_s`` into a unit."""
    length = question.size / INPUT_RATE
    lead = (np.ceil(length) + phase_s) - length
    return conversation(question, lead_s=float(lead), tail_s=5.0)


def test_a_pause_at_a_unit_end_starts_the_answer_early(
    replica: LiteReplica, speaker: Speaker
) -> None:
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    try:
        question = _ending_at(speaker.say("What is the capital of France?"), 0.6)
        results = run_in_real_time(session, question[: 6 * INPUT_RATE])
    finally:
        session.close()
    assert len(session.speculated) == 1
    assert session.speculation_hits == 1
    assert {"capital", "france"} <= words(session.heard[0])
    first = next(r for r in results if not r.listen)
    assert "paris" in " ".join(r.text for r in results).lower()
    # The reply began a unit early, so it is (nearly) ready when the turn ends; how ready is
    # a benchmark (tools/bench_lite.py): this bound only catches a reply started from scratch
    # that then had to time out.
    assert first.timings["wait_audio"] < 2500, "the speculative reply should be under way"


@pytest.mark.parametrize("peek_max_s", [8.0, 0.5], ids=["whole", "pieces"])
def test_talking_on_after_a_pause_drops_the_early_answer(
    replica: LiteReplica, speaker: Speaker, peek_max_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early answer is dropped, and the turn's text is all of it: one utterance that
    went on after the pause, or (a long turn) its pieces before and after the pause."""
    monkeypatch.setattr(engine, "_PEEK_MAX_S", peek_max_s)
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    first = speaker.say("What is the capital")
    second = speaker.say("of France?")
    length = first.size / INPUT_RATE
    lead = np.zeros(int(((np.ceil(length) + 0.6) - length) * INPUT_RATE), dtype=np.float32)
    gap = np.zeros(int(0.45 * INPUT_RATE), dtype=np.float32)
    audio = np.concatenate([lead, first, gap, second, np.zeros(5 * INPUT_RATE, np.float32)])
    try:
        results = run_in_real_time(session, audio)
    finally:
        session.close()
    assert session.speculated, "the pause after 'capital' should have been answered early"
    assert "france" not in words(session.speculated[0])
    assert len(session.heard) == 1
    assert {"capital", "france"} <= words(session.heard[0]), session.heard
    assert any("paris" in r.text.lower() for r in results)


def test_a_turn_that_ends_inside_a_unit_is_answered_inside_it(
    replica: LiteReplica, speaker: Speaker
) -> None:
    """Sub-unit turn ends: early steps every 40 ms of the pause (as a call makes them) find
    the end of the turn inside the unit, and its reply starts there."""
    session = replica.open_session(SessionConfig())
    assert isinstance(session, LiteSession)
    config = replica.config
    question = speaker.say("What is the capital of France?")
    audio = _ending_at(question, 0.05)
    end_unit = int(np.ceil(question.size / INPUT_RATE))
    early: list[tuple[int, StepResult]] = []
    results: list[StepResult] = []
    try:
        for unit in units(audio):
            if unit.index == end_unit:
                start = int(0.05 * INPUT_RATE) + 640
                for n in range(start, UNIT_SAMPLES, 640):
                    began = time.monotonic()
                    result = session.step_early(PartialUnit(unit.index, unit.audio[:n]))
                    early.append((n, result))
                    if not result.listen:
                        break
                    time.sleep(max(0.0, 0.04 - (time.monotonic() - began)))
            results.append(session.step(unit))
    finally:
        session.close()
    assert session.turn_ends, "the turn never ended"
    ended_in, heard_samples = session.turn_ends[0]
    assert ended_in == end_unit, "the turn should end in an early step of its unit"
    pause_ms = (heard_samples - 0.05 * INPUT_RATE) * 1000 / INPUT_RATE
    # Silero's frames are 32 ms and the early steps 40 ms apart.
    assert config.end_pause_ms <= pause_ms + 60 <= config.end_pause_ms + 200, pause_ms
    # The reply's first speech comes with what was heard, in an early step if it was ready
    # by then, else in the next step that has it; nothing is said twice.
    spoken = [r for _, r in early if not r.listen] + [r for r in results if not r.listen]
    assert spoken and spoken[0].audio is not None
    assert "paris" in " ".join(r.text for r in spoken).lower()
    announced = [r.heard for _, r in early if r.heard] + [r.heard for r in results if r.heard]
    assert len(announced) == 1 and {"capital", "france"} <= words(announced[0]), announced
    assert spoken[0].heard == announced[0]
    # What the early steps heard is not heard again by the unit's own step.
    assert len(session.heard) == 1, session.heard

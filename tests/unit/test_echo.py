"""EchoSession: listens while you speak, then says the utterance back, one unit at a time."""

from __future__ import annotations

import re

import numpy as np
import pytest

from omni.api import INPUT_RATE, OUTPUT_RATE, OUTPUT_UNIT_SAMPLES, UNIT_SAMPLES, StepResult, Unit
from omni.echo import EchoConfig, EchoSession, echo_engine
from tests.support.media import rms, silence, speechlike

PAD_S = 0.15
"""Silence the echo keeps on each side of an utterance."""


def units_of(signal: np.ndarray) -> list[Unit]:
    count = -(-signal.size // UNIT_SAMPLES)
    padded = np.pad(signal, (0, count * UNIT_SAMPLES - signal.size)).astype(np.float32)
    return [
        Unit(index=i, start_ms=i * 1000, audio=padded[i * UNIT_SAMPLES : (i + 1) * UNIT_SAMPLES])
        for i in range(count)
    ]


def talk(speech_s: float, lead_s: float = 1.0, tail_s: float = 4.0, seed: int = 3) -> np.ndarray:
    return np.concatenate(
        [
            silence(lead_s, INPUT_RATE),
            speechlike(speech_s, INPUT_RATE, seed=seed),
            silence(tail_s, INPUT_RATE),
        ]
    )


def run(session: EchoSession, signal: np.ndarray) -> list[StepResult]:
    return [session.step(unit) for unit in units_of(signal)]


def reply_of(results: list[StepResult]) -> np.ndarray:
    return np.concatenate([r.audio for r in results if r.audio is not None])


def echo_seconds(text: str) -> float:
    match = re.fullmatch(r"\[echo (\d+\.\d) s\]", text)
    assert match, f"unexpected text {text!r}"
    return float(match.group(1))


def test_listens_during_speech_then_says_it_back() -> None:
    results = run(EchoSession(EchoConfig()), talk(2.0))
    states = ["L" if r.listen else "S" for r in results]
    # Speech is in units 1..2 and ends at 3.0 s; 600 ms of silence later the reply starts.
    assert states[:3] == ["L", "L", "L"]
    first = states.index("S")
    assert first == 3
    speaking = results[first:]
    last = max(i for i, r in enumerate(speaking) if not r.listen)
    assert all(not r.listen for r in speaking[: last + 1])
    assert all(r.listen for r in speaking[last + 1 :])
    for r in results:
        assert (r.audio is None) == r.listen
        assert r.listen or (r.audio is not None and r.audio.dtype == np.float32)
    assert [r.end_of_turn for r in speaking[: last + 1]] == [False] * last + [True]
    assert not any(r.end_of_turn for r in results[:first])
    assert all(r.audio.size == OUTPUT_UNIT_SAMPLES for r in speaking[:last] if r.audio is not None)


def test_reply_duration_matches_the_utterance_and_the_text() -> None:
    results = run(EchoSession(EchoConfig()), talk(2.0))
    speaking = [r for r in results if not r.listen]
    reply = reply_of(results)
    seconds = reply.size / OUTPUT_RATE
    assert 2.0 <= seconds <= 2.0 + 2 * PAD_S + 0.1
    said = echo_seconds(speaking[0].text)
    assert said == pytest.approx(seconds, abs=0.051)
    assert [r.text for r in speaking[1:]] == [""] * (len(speaking) - 1)
    assert all(r.text == "" for r in results if r.listen)


def test_the_reply_is_the_utterance() -> None:
    reply = reply_of(run(EchoSession(EchoConfig()), talk(2.0, seed=3)))
    source = speechlike(2.0, OUTPUT_RATE, seed=3)  # the same speech, made at 24 kHz
    corr = np.correlate(reply, source, "valid")
    lag = int(np.argmax(corr))
    window = reply[lag : lag + source.size]
    similarity = corr[lag] / np.sqrt(np.sum(source**2) * np.sum(window**2))
    assert similarity > 0.9
    assert lag / OUTPUT_RATE == pytest.approx(PAD_S, abs=0.05), "pre-roll pad in front"
    assert rms(window) == pytest.approx(rms(source), rel=0.1)
    assert rms(reply[: int(0.1 * OUTPUT_RATE)]) < 0.01, "it starts with the quiet pad"


@pytest.mark.parametrize("speech_s", [1.0, 3.0, 4.5])
def test_reply_length_follows_the_utterance_length(speech_s: float) -> None:
    results = run(EchoSession(EchoConfig()), talk(speech_s, tail_s=speech_s + 3))
    assert results[-1].listen, "the whole reply fits in the run"
    seconds = reply_of(results).size / OUTPUT_RATE
    assert speech_s <= seconds <= speech_s + 2 * PAD_S + 0.1
    assert sum(not r.listen for r in results) == -(-reply_of(results).size // OUTPUT_UNIT_SAMPLES)


def test_interrupt_stops_speaking_at_the_next_step() -> None:
    session = EchoSession(EchoConfig())
    units = units_of(talk(4.0, tail_s=6.0))
    first_speaking = next(i for i, unit in enumerate(units) if not session.step(unit).listen)
    assert session.speaking, "a 4 s reply takes several units"
    session.interrupt()
    assert session.speaking, "interrupt only takes effect at the next step"
    after = [session.step(unit) for unit in units[first_speaking + 1 :]]
    assert after[0].listen
    assert after[0].audio is None
    assert not after[0].end_of_turn
    assert all(r.listen for r in after), "the rest of the reply is gone"
    assert not session.speaking


def test_after_an_interrupt_the_next_utterance_is_echoed() -> None:
    session = EchoSession(EchoConfig())
    first = run(session, talk(3.0, tail_s=1.0, seed=1))
    assert not first[-1].listen
    session.interrupt()
    second = run(session, talk(1.5, lead_s=0.0, seed=2))
    speaking = [r for r in second if not r.listen]
    assert speaking, "the new utterance is said back"
    assert echo_seconds(speaking[0].text) == pytest.approx(1.5 + 2 * PAD_S, abs=0.2)
    assert session.discarded_utterances == 0


def test_an_utterance_ending_while_speaking_is_not_echoed() -> None:
    session = EchoSession(EchoConfig())
    run(session, talk(4.0, tail_s=0.7))  # its reply has just started
    assert session.speaking
    results = run(session, talk(0.8, lead_s=0.2, tail_s=6.0, seed=5))
    assert session.discarded_utterances == 1
    texts = [r.text for r in results if r.text]
    assert texts == [], "no second reply"
    assert results[-1].listen


@pytest.mark.parametrize("speech_s", [0.1, 0.15])
def test_utterances_shorter_than_min_speech_ms_are_not_echoed(speech_s: float) -> None:
    results = run(EchoSession(EchoConfig(min_speech_ms=300)), talk(speech_s, tail_s=2.0))
    assert all(r.listen for r in results)


def test_min_speech_ms_is_configurable() -> None:
    strict = EchoConfig(min_speech_ms=800)
    assert all(r.listen for r in run(EchoSession(strict), talk(0.4, tail_s=2.0)))
    assert any(not r.listen for r in run(EchoSession(strict), talk(1.2, tail_s=3.0)))


def test_silence_is_never_echoed() -> None:
    session = EchoSession(EchoConfig())
    assert all(r.listen for r in run(session, silence(6.0, INPUT_RATE)))
    assert not session.speaking


def test_max_utterance_s_caps_the_reply_to_the_end_of_the_utterance() -> None:
    config = EchoConfig(max_utterance_s=2.0)
    results = run(EchoSession(config), talk(5.0, seed=4, tail_s=4.0))
    reply = reply_of(results)
    assert reply.size <= 2.0 * OUTPUT_RATE
    assert reply.size >= 1.0 * OUTPUT_RATE
    # It is the end of the utterance: it matches the last part of the speech.
    source = speechlike(5.0, OUTPUT_RATE, seed=4)
    tail = source[-int(1.0 * OUTPUT_RATE) :]
    corr = np.correlate(reply, tail, "valid")
    lag = int(np.argmax(corr))
    window = reply[lag : lag + tail.size]
    assert corr[lag] / np.sqrt(np.sum(tail**2) * np.sum(window**2)) > 0.9


@pytest.mark.parametrize("end_silence_ms", [600, 1500])
def test_a_long_utterance_is_said_back_for_max_utterance_s(end_silence_ms: int) -> None:
    config = EchoConfig(max_utterance_s=2.0, end_silence_ms=end_silence_ms)
    results = run(EchoSession(config), talk(5.0, seed=4, tail_s=4.0))
    speaking = [r for r in results if not r.listen]
    assert reply_of(results).size == pytest.approx(2.0 * OUTPUT_RATE, abs=0.05 * OUTPUT_RATE)
    assert speaking[0].text == "[echo 2.0 s]"


def test_end_silence_ms_delays_the_reply() -> None:
    quick = run(EchoSession(EchoConfig(end_silence_ms=300)), talk(2.0, lead_s=0.5))
    slow = run(EchoSession(EchoConfig(end_silence_ms=1800)), talk(2.0, lead_s=0.5))
    first_quick = next(i for i, r in enumerate(quick) if not r.listen)
    first_slow = next(i for i, r in enumerate(slow) if not r.listen)
    assert first_quick == 2  # speech ends at 2.5 s, +0.3 s (+ VAD hangover) < 3 s
    assert first_slow == 4  # ends at 2.5 s, +1.8 s > 4 s


def test_step_reports_its_timings() -> None:
    result = EchoSession(EchoConfig()).step(units_of(silence(1.0, INPUT_RATE))[0])
    assert set(result.timings) == {"vad", "total"}
    assert 0 <= result.timings["vad"] <= result.timings["total"]


def test_close_forgets_the_reply() -> None:
    session = EchoSession(EchoConfig())
    run(session, talk(3.0, tail_s=1.0))
    assert session.speaking
    session.close()
    assert not session.speaking


def test_echo_config_validates() -> None:
    for bad in (
        {"max_utterance_s": 0.1},
        {"end_silence_ms": 50},
        {"min_speech_ms": 10},
        {"aggressiveness": 4},
    ):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be"):
            EchoConfig(**bad)  # type: ignore[arg-type]


def test_engine_builds_working_replicas() -> None:
    engine = echo_engine(EchoConfig(), replicas=2)
    assert engine.info.name == "echo"
    assert engine.info.replicas == 2
    replica = engine.create_replica(0)
    replica.warmup()
    session = replica.open_session(None)  # type: ignore[arg-type]
    results = [session.step(u) for u in units_of(talk(1.0, tail_s=2.0))]
    assert any(not r.listen for r in results)
    session.close()
    replica.shutdown()

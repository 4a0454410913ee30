"""SpeechDetector: speech edges near the truth, clicks and noise ignored, speech_ms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from realtime.config import VadConfig
from realtime.vad import SpeechDetector, SpeechEdge, SpeechEvent
from tests.support.media import silence, speechlike

RATE = 16_000


def feed_all(
    detector: SpeechDetector, signal: np.ndarray, chunk: int = 320
) -> list[tuple[int, SpeechEvent]]:
    """Feed ``signal`` in chunks; each event with the media position (ms) it came out at."""
    out = []
    for start in range(0, signal.size, chunk):
        part = signal[start : start + chunk]
        for event in detector.feed(part):
            out.append(((start + part.size) * 1000 // RATE, event))
    return out


def utterance(lead_s: float, speech_s: float, tail_s: float, seed: int = 1) -> np.ndarray:
    return np.concatenate(
        [silence(lead_s, RATE), speechlike(speech_s, RATE, seed=seed), silence(tail_s, RATE)]
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("chunk", [320, 333, 16_000])
def test_speech_gives_started_then_stopped_near_the_true_edges(seed: int, chunk: int) -> None:
    detector = SpeechDetector(VadConfig())
    events = [e for _, e in feed_all(detector, utterance(1.0, 2.0, 1.5, seed), chunk)]
    assert [e.edge for e in events] == [SpeechEdge.STARTED, SpeechEdge.STOPPED]
    assert 1000 - 100 <= events[0].at_ms <= 1000 + 200
    assert 3000 - 300 <= events[1].at_ms <= 3000 + 200
    assert events[0].at_ms % 20 == 0 and events[1].at_ms % 20 == 0
    assert not detector.speaking


def test_events_come_out_after_start_ms_and_stop_ms() -> None:
    detector = SpeechDetector(VadConfig(start_ms=200, stop_ms=600))
    timed = feed_all(detector, utterance(1.0, 2.0, 1.5))
    (started_when, started), (stopped_when, stopped) = timed
    # Reported positions are the edges; the events themselves need evidence first.
    assert started_when - started.at_ms >= 200
    assert started_when <= 1000 + 300 + 20
    assert stopped_when - stopped.at_ms == pytest.approx(600, abs=20)


def test_a_shorter_stop_ms_ends_speech_sooner() -> None:
    long = feed_all(SpeechDetector(VadConfig(stop_ms=600)), utterance(1.0, 2.0, 1.5))
    short = feed_all(SpeechDetector(VadConfig(stop_ms=200)), utterance(1.0, 2.0, 1.5))
    assert short[1][0] < long[1][0] - 300
    assert short[1][0] - short[1][1].at_ms == pytest.approx(200, abs=20)


def test_silence_gives_no_events() -> None:
    detector = SpeechDetector(VadConfig())
    assert feed_all(detector, silence(3.0, RATE)) == []
    assert not detector.speaking
    assert detector.speech_ms == 0


def test_speech_ms_grows_while_speaking() -> None:
    detector = SpeechDetector(VadConfig())
    signal = utterance(1.0, 3.0, 1.0)
    seen = []
    for start in range(0, int(3.5 * RATE), 320):
        detector.feed(signal[start : start + 320])
        if detector.speaking:
            seen.append(((start + 320) * 1000 // RATE, detector.speech_ms))
    assert seen, "speech must have started"
    assert all(b[1] > a[1] for a, b in itertools.pairwise(seen))
    when, speech_ms = seen[-1]
    assert when == 3500
    assert speech_ms == pytest.approx(2500, abs=200)
    for _ in range(100):
        detector.feed(silence(0.02, RATE))
    assert detector.speech_ms == 0


def test_short_clicks_do_not_start_speech() -> None:
    signal = silence(3.0, RATE)
    for at in np.arange(0.2, 2.8, 0.15):  # a 5 ms click every 150 ms
        start = int(at * RATE)
        signal[start : start + 80] = 0.8 * np.sign(np.sin(np.arange(80) * 0.9))
    detector = SpeechDetector(VadConfig())
    assert feed_all(detector, signal) == []


@pytest.mark.parametrize("burst_s", [0.03, 0.06, 0.1])
def test_short_noise_bursts_do_not_start_speech(burst_s: float) -> None:
    rng = np.random.default_rng(4)
    parts = []
    for _ in range(4):
        parts.append(silence(0.5, RATE))
        parts.append((rng.standard_normal(int(burst_s * RATE)) * 0.3).astype(np.float32))
    parts.append(silence(0.5, RATE))
    detector = SpeechDetector(VadConfig())
    assert feed_all(detector, np.concatenate(parts)) == []


def test_a_speech_burst_shorter_than_start_ms_does_not_start_speech() -> None:
    detector = SpeechDetector(VadConfig(start_ms=200))
    assert feed_all(detector, utterance(0.5, 0.12, 1.0)) == []


def test_a_pause_shorter_than_stop_ms_does_not_split_speech() -> None:
    signal = np.concatenate(
        [
            silence(0.5, RATE),
            speechlike(1.0, RATE, seed=1),
            silence(0.3, RATE),
            speechlike(1.0, RATE, seed=2),
            silence(1.0, RATE),
        ]
    )
    events = [e for _, e in feed_all(SpeechDetector(VadConfig(stop_ms=600)), signal)]
    assert [e.edge for e in events] == [SpeechEdge.STARTED, SpeechEdge.STOPPED]
    assert events[1].at_ms >= 2800 - 300


def test_two_utterances_give_two_pairs_of_events() -> None:
    signal = np.concatenate([utterance(0.5, 1.0, 1.0, seed=1), utterance(0.0, 1.5, 1.0, seed=2)])
    events = [e for _, e in feed_all(SpeechDetector(VadConfig()), signal)]
    assert [e.edge for e in events] == [
        SpeechEdge.STARTED,
        SpeechEdge.STOPPED,
        SpeechEdge.STARTED,
        SpeechEdge.STOPPED,
    ]
    assert events[2].at_ms == pytest.approx(2500, abs=200)
    assert events[3].at_ms == pytest.approx(4000, abs=300)


def test_feeding_odd_sizes_keeps_media_positions() -> None:
    """The leftover of each feed carries over: positions do not depend on chunking."""
    signal = utterance(1.3, 1.7, 1.0, seed=2)
    whole = [e for _, e in feed_all(SpeechDetector(VadConfig()), signal, chunk=signal.size)]
    odd = [e for _, e in feed_all(SpeechDetector(VadConfig()), signal, chunk=77)]
    assert whole == odd
    assert len(whole) == 2


def test_voiced_ms_counts_talk_not_the_pause_after_it() -> None:
    """Barge-in compares voiced time: a 220 ms sound must not look like 400 ms of talk."""
    detector = SpeechDetector(VadConfig())
    audio = np.concatenate(
        [silence(0.5, 16_000), speechlike(0.22, 16_000, seed=4), silence(0.5, 16_000)]
    )
    most = 0
    for start in range(0, audio.size, 320):
        detector.feed(audio[start : start + 320])
        most = max(most, detector.voiced_ms)
        assert detector.voiced_ms <= detector.speech_ms or not detector.speaking
    assert most < 400
    talk = SpeechDetector(VadConfig())
    talk.feed(np.concatenate([silence(0.3, 16_000), speechlike(1.0, 16_000, seed=5)]))
    assert talk.voiced_ms >= 600


def test_the_pause_after_speech_is_counted_past_the_end_of_the_segment() -> None:
    """``since_speech_ms`` (when a call asks for early steps): None before any speech, 0
    while voiced, then the quiet since the last voiced frame, also after ``stopped``."""
    detector = SpeechDetector(VadConfig(stop_ms=600))
    feed_all(detector, silence(1.0, RATE))
    assert detector.since_speech_ms is None
    feed_all(detector, speechlike(1.0, RATE, seed=2))
    assert detector.since_speech_ms is not None and detector.since_speech_ms < 200
    feed_all(detector, silence(0.3, RATE))
    assert 200 <= detector.since_speech_ms <= 500 and detector.speaking
    feed_all(detector, silence(1.0, RATE))
    assert not detector.speaking, "the segment stopped"
    assert 1200 <= detector.since_speech_ms <= 1500

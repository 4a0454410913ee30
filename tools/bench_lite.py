"""Benchmark of the `lite` CPU engine.

1. Stages, in this process, over spoken questions (Piper): real-time factor of the VAD, of
   recognition (the configured recognizer, in its worker process) and of speech synthesis,
   and the language model's tokens per second and time to first token.
2. Calls through a server in its own process (aiortc client, immediate jitter buffer): time from
   the end of the person's speech (last frame of the question leaving the client) to the first
   frame of the reply arriving, p50/p95; server CPU and memory (with its recognizer workers);
   and the same with 2 and 3 concurrent calls, to see how many this machine sustains in real
   time (no dropped units, replies still quick).

3. ``--busy``: the same with another process keeping one core busy all along (a CPU hog at
   normal priority), to see that the media keeps its pace when the cores are contended.
4. ``--baseline KEY=VALUE,...``: every call run is repeated with these server settings
   (environment overrides) and shown beside the configured one, e.g.
   ``--baseline OMNIRTC_CALL__EARLY_EVERY_MS=0`` (whole units only, no sub-unit turn ends) or
   ``--baseline OMNIRTC_ENGINE__LITE__NICE=0`` (models at the media's priority).

Usage: .venv/bin/python tools/bench_lite.py [--questions 8] [--calls 1,2,3] [--busy]
       [--baseline OMNIRTC_CALL__EARLY_EVERY_MS=0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import soxr
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.api import INPUT_RATE, OUTPUT_RATE, UNIT_SAMPLES, SessionConfig, Unit
from omni.lite.config import LiteConfig
from omni.lite.engine import LiteReplica, LiteSession
from omni.lite.tts import Voice
from omni.lite.turns import TurnDetector, silero
from tools.benchlib import FRAME, RATE, BenchCall, ScriptTrack, fmt, free_port, omnirtc_server

QUESTIONS = [
    "What is the capital of France?",
    "How are you today?",
    "What time is it in London?",
    "Can you tell me a joke?",
    "What is the weather like tomorrow?",
    "Who wrote the book about a white whale?",
    "What is your name?",
    "How far away is the moon?",
]
CYCLE_S = 9.0


def spoken(voice: Voice, text: str, rate: int) -> NDArray[np.float32]:
    """``text`` said by Piper, ending at its last sound: the "end of speech" the replies are
    timed from (Piper's own 150-190 ms of quiet after it would hide as much of their wait)."""
    audio = voice.synthesize(text, tail_ms=0)
    return soxr.resample(audio, OUTPUT_RATE, rate).astype(np.float32)


# ---------------------------------------------------------------- 1. stages


def stages(voice: Voice, count: int) -> dict[str, Any]:
    replica = LiteReplica(LiteConfig(nice=0))  # this thread also runs the servers
    replica.warmup()
    vad_s = audio_s = 0.0
    first_tokens, per_token, tts_rtf, first_audio = [], [], [], []
    try:
        for text in QUESTIONS[:count]:
            question = spoken(voice, text, INPUT_RATE)
            detector = TurnDetector(LiteConfig(), silero())
            update = detector.feed(question)
            vad_s += update.vad_ms / 1000
            audio_s += question.size / INPUT_RATE
            session = replica.open_session(SessionConfig())
            assert isinstance(session, LiteSession)
            padded = np.concatenate([question, np.zeros(12 * INPUT_RATE, np.float32)])
            for i in range(padded.size // UNIT_SAMPLES):
                result = session.step(
                    Unit(
                        index=i,
                        start_ms=i * 1000,
                        audio=padded[i * UNIT_SAMPLES : (i + 1) * UNIT_SAMPLES],
                    )
                )
                if result.end_of_turn:
                    t = result.timings
                    first_tokens.append(t["llm_first_token"])
                    per_token.append(t["llm_ms_per_token"])
                    tts_rtf.append(t["tts_rtf_x1000"] / 1000)
                    first_audio.append(t["reply_first_audio"])
            session.close()
        asr_busy, asr_audio = replica.asr.stats()
        asr_name = replica.asr.name
    finally:
        replica.shutdown()
    return {
        "asr": asr_name,
        "vad_rtf": vad_s / audio_s,
        "asr_rtf": asr_busy / max(asr_audio, 1e-9),
        "llm_first_token": first_tokens,
        "llm_tokens_per_s": [1000 / p for p in per_token],
        "tts_rtf": tts_rtf,
        "reply_first_audio": first_audio,
    }


# ---------------------------------------------------------------- 2. calls


class Asker:
    """Asks one question every CYCLE_S seconds; remembers when each question ended."""

    def __init__(self, questions: list[NDArray[np.float32]], offset_s: float) -> None:
        self._questions = questions
        self._cycle = int(CYCLE_S * RATE / FRAME)
        self._offset = int(offset_s * RATE / FRAME)
        self.track = ScriptTrack(self._chunk)
        self.ends: list[float] = []
        self._asked: dict[int, int] = {}

    def _chunk(self, k: int) -> NDArray[np.float32]:
        k -= self._offset
        if k < 0:
            return np.zeros(FRAME, np.float32)
        cycle, i = divmod(k, self._cycle)
        question = self._questions[cycle % len(self._questions)]
        frames = question.size // FRAME
        if i < frames:
            if i == frames - 1:
                self.ends.append(time.monotonic() + FRAME / RATE)
            return question[i * FRAME : (i + 1) * FRAME]
        return np.zeros(FRAME, np.float32)


def reply_delays(call: BenchCall, asker: Asker) -> list[float]:
    delays = []
    for end in asker.ends:
        for when, chunk in call.received:
            if end < when < end + CYCLE_S - 1 and float(np.max(np.abs(chunk))) > 0.05:
                delays.append((when - end) * 1000)
                break
    return delays


def tree_usage(pid: int) -> tuple[float, float]:
    """CPU seconds and resident MB of a process and its children (recognizer workers)."""
    parent = psutil.Process(pid)
    cpu = rss = 0.0
    for proc in [parent, *parent.children(recursive=True)]:
        times = proc.cpu_times()
        cpu += times.user + times.system
        rss += proc.memory_info().rss / 2**20
    return cpu, rss


async def call_run(
    base: str, pid: int, questions: list[NDArray[np.float32]], calls: int, rounds: int
) -> dict[str, Any]:
    askers = [
        Asker(questions[i:] + questions[:i], offset_s=1.0 + i * CYCLE_S / calls)
        for i in range(calls)
    ]
    group = [BenchCall(a.track) for a in askers]
    async with aiohttp.ClientSession() as http:
        for call in group:
            await call.start(http, f"{base}/v1/calls", {"session": {"mode": "engine"}})
        cpu0, _ = tree_usage(pid)
        wall0 = time.monotonic()
        await asyncio.sleep(rounds * CYCLE_S + 1.5)
        cpu1, rss = tree_usage(pid)
        wall1 = time.monotonic()
        snaps = []
        for call in group:
            async with http.get(f"{base}/v1/calls/{call.call_id}") as r:
                snaps.append(await r.json())
        await asyncio.gather(*(c.close() for c in group))
    delays = [
        d for call, asker in zip(group, askers, strict=True) for d in reply_delays(call, asker)
    ]
    late = [
        e["timings"]["late_ms"] for call in group for _, e in call.events if e["type"] == "unit"
    ]
    return {
        "delays": delays,
        "asked": sum(len(a.ends) for a in askers),
        "dropped": sum(s["counters"]["dropped_units"] for s in snaps),
        "late": late,
        "cpu": (cpu1 - cpu0) / (wall1 - wall0) * 100,
        "rss": rss,
    }


@contextlib.contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """Another process spinning on one core (normal priority) while the block runs."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


async def calls_bench(
    questions: list[NDArray[np.float32]], loads: list[int], rounds: int, env: dict[str, str]
) -> dict[int, Any]:
    results = {}
    for n in loads:
        port = free_port()
        server = omnirtc_server(
            port, engine="lite", start_timeout_s=300, OMNIRTC_ENGINE__REPLICAS=str(n), **env
        )
        async with server:
            assert server.proc is not None
            _, idle_rss = tree_usage(server.proc.pid)
            results[n] = await call_run(
                f"http://127.0.0.1:{port}", server.proc.pid, questions, n, rounds
            )
            results[n]["idle_rss"] = idle_rss
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--calls", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=8, help="questions per call")
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("--baseline", default="", help="KEY=VALUE,... to compare against")
    parser.add_argument("--skip-stages", action="store_true")
    args = parser.parse_args()
    voice = Voice(threads=2, speech_rate=1.0)
    voice.load()
    stage = None if args.skip_stages else stages(voice, args.questions)
    questions = [spoken(voice, q, RATE) for q in QUESTIONS]
    loads = [int(n) for n in args.calls.split(",")]
    variants = {"configured": {}}
    if args.baseline:
        variants["baseline"] = dict(kv.split("=", 1) for kv in args.baseline.split(","))
    runs = {}
    with busy_core(args.busy):
        for label, env in variants.items():
            runs[label] = asyncio.run(calls_bench(questions, loads, args.rounds, env))
    busy = ", one core kept busy by another process" if args.busy else ""
    print(f"\nlite engine benchmark ({args.questions} spoken questions; 2-core machine{busy})")
    if stage is not None:
        print_stages(stage)
    for label, calls in runs.items():
        if len(runs) > 1:
            print(f"\n== {label}: {variants[label] or 'settings as configured'}")
        print_calls(calls)


def print_stages(stage: dict[str, Any]) -> None:
    print(f"{'VAD (Silero) real-time factor':46}{stage['vad_rtf']:.3f}")
    print(f"{'recognition (' + stage['asr'] + ') real-time factor':46}{stage['asr_rtf']:.3f}")
    print(f"{'language model tokens/s':46}{fmt(stage['llm_tokens_per_s'])}")
    print(f"{'language model first token (ms)':46}{fmt(stage['llm_first_token'])}")
    print(f"{'speech synthesis (Piper) real-time factor':46}{fmt(stage['tts_rtf'], 3)}")
    print(f"{'reply start -> first sentence spoken (ms)':46}{fmt(stage['reply_first_audio'])}")


def print_calls(calls: dict[int, Any]) -> None:
    for n, r in calls.items():
        print(
            f"\n{n} concurrent call(s), {r['asked']} questions asked, {len(r['delays'])} answered:"
        )
        print(f"{'  end of speech -> first reply audio (ms)':46}{fmt(r['delays'])}")
        print(f"{'  unit step lateness (ms)':46}{fmt(r['late'])}")
        print(f"{'  dropped units':46}{r['dropped']}")
        cpu, rss = r["cpu"], r["rss"]
        print(
            f"{'  server CPU (all processes)':46}{cpu:.0f} % of a core ({cpu / n:.0f} % per call)"
        )
        print(f"{'  server memory (all processes)':46}{rss:.0f} MB ({r['idle_rss']:.0f} MB idle)")


if __name__ == "__main__":
    main()

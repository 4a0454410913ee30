"""Pipeline benchmark: the whole engine path of omnirtc with the `echo` engine.

Measures (server in its own process, aiortc client with an immediate jitter buffer):
  * echo reply delay: from the last frame of an utterance leaving the client to the first
    frame of the echo arriving back, p50/p95;
  * pipeline delay: from the last sample of a unit arriving at the server to the engine step
    starting (`wait_ms` of `unit` events), p50/p95;
  * outbound pacing: how late each 20 ms frame left the server's pacer (server side) and the
    jitter of frame arrivals at the client while speech plays;
  * server CPU per call with 1, 5 and 10 concurrent echo calls (2 s talk, 3 s pause, repeated).

Usage: .venv/bin/python tools/bench_pipeline.py [--utterances 10] [--calls 1,5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchlib import FRAME, RATE, BenchCall, ScriptTrack, fmt, free_port, omnirtc_server

CYCLE_S = 5.3  # not a whole number of units: utterances end at every phase of a unit
TALK_S = 2.0


def _voice(seconds: float, seed: int) -> NDArray[np.float32]:
    """Voiced, syllable-modulated audio with formants: WebRTC VAD takes it for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    out = np.zeros(t.size)
    formants = rng.uniform(0.9, 1.1, 3) * np.array([700.0, 1220.0, 2600.0])
    for k in range(1, 30):
        gain = sum(np.exp(-0.5 * ((k * f0 - c) / 150) ** 2) for c in formants) + 0.05 / k
        out += gain * np.sin(k * phase)
    out *= np.clip(1.3 * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)), 0, 1)
    return (0.3 * out / np.max(np.abs(out))).astype(np.float32)


class Talker:
    """Talks for TALK_S then pauses, every CYCLE_S; remembers when each utterance ended."""

    def __init__(self, seed: int) -> None:
        cycle = np.zeros(int(CYCLE_S * RATE), dtype=np.float32)
        voice = _voice(TALK_S, seed)
        cycle[: voice.size] = voice
        self._cycle = cycle
        self._frames = cycle.size // FRAME
        self._last_voiced = voice.size // FRAME - 1
        self.track = ScriptTrack(self._chunk)

    def _chunk(self, k: int) -> NDArray[np.float32]:
        i = k % self._frames
        return self._cycle[i * FRAME : (i + 1) * FRAME]

    def utterance_ends(self) -> list[float]:
        return sorted(
            t for k, t in self.track.sent.items() if k % self._frames == self._last_voiced
        )


def reply_delays(call: BenchCall, talker: Talker) -> list[float]:
    delays = []
    for end in talker.utterance_ends():
        for when, chunk in call.received:
            if end < when < end + CYCLE_S - TALK_S and float(np.max(np.abs(chunk))) > 0.05:
                delays.append((when - end) * 1000)
                break
    return delays


def arrival_jitter(call: BenchCall) -> list[float]:
    """|inter-arrival - 20 ms| of received frames while speech plays (ms)."""
    times = [t for t, chunk in call.received if float(np.max(np.abs(chunk))) > 0.01]
    gaps = np.diff(times) * 1000
    return [abs(g - 20.0) for g in gaps if g < 200]


async def snapshot(http: aiohttp.ClientSession, base: str, call_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/calls/{call_id}") as r:
        return dict(await r.json())


async def latency_run(base: str, utterances: int) -> dict[str, Any]:
    talker = Talker(seed=1)
    call = BenchCall(talker.track)
    async with aiohttp.ClientSession() as http:
        await call.start(http, f"{base}/v1/calls", {"session": {"mode": "engine"}})
        await asyncio.sleep(utterances * CYCLE_S + 1.0)
        snap = await snapshot(http, base, call.call_id or "")
        await call.close()
    waits = [e["timings"]["wait_ms"] for _, e in call.events if e["type"] == "unit"]
    return {
        "reply": reply_delays(call, talker),
        "wait": waits,
        "arrival_jitter": arrival_jitter(call),
        "server_lateness": snap["timings_ms"]["out_frame_lateness"],
        "skipped": snap["counters"]["frames_out_skipped"],
    }


async def cpu_run(server: Any, base: str, calls: int, seconds: float) -> tuple[float, float]:
    group = [BenchCall(Talker(seed=i).track) for i in range(calls)]
    async with aiohttp.ClientSession() as http:
        for call in group:
            await call.start(http, f"{base}/v1/calls", {"session": {"mode": "engine"}})
        await asyncio.sleep(2.0)
        cpu0, wall0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = server.cpu_seconds(), time.monotonic()
        await asyncio.gather(*(c.close() for c in group))
    total = (cpu1 - cpu0) / (wall1 - wall0) * 100
    return total / calls, total


async def gc_pauses(base: str) -> dict[str, tuple[int, float, str]]:
    """The server's garbage collections so far, by generation: how many, their mean, and the
    histogram bucket its longest one fell in (``omnirtc_gc_pause_seconds``)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.startswith("omnirtc_gc_pause_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        generation = name.split('generation="')[1].split('"')[0]
        entry = found.setdefault(generation, {"buckets": []})
        if name.startswith("omnirtc_gc_pause_seconds_count"):
            entry["count"] = int(float(value))
        elif name.startswith("omnirtc_gc_pause_seconds_sum"):
            entry["sum"] = float(value)
        elif 'le="' in name:
            entry["buckets"].append((name.split('le="')[1].split('"')[0], float(value)))
    out = {}
    for generation, entry in sorted(found.items()):
        count = entry.get("count", 0)
        top = next((le for le, n in entry["buckets"] if n >= count), "+Inf")
        out[generation] = (count, entry.get("sum", 0.0) / max(1, count), top)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--calls", default="1,5,10")
    parser.add_argument("--cpu-seconds", type=float, default=15.0)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with omnirtc_server(port, engine="echo") as server:
        result = await latency_run(base, args.utterances)
        cpu = {}
        for n in (int(x) for x in args.calls.split(",")):
            cpu[n] = await cpu_run(server, base, n, args.cpu_seconds)
            await asyncio.sleep(1.0)
        collections = await gc_pauses(base)
    lateness = result["server_lateness"] or {}
    print(f"\npipeline benchmark (echo engine, {args.utterances} utterances of {TALK_S:.0f} s)")
    print(f"{'echo reply delay after utterance (ms)':44}{fmt(result['reply'])}")
    print(f"{'pipeline: last sample in -> step (ms)':44}{fmt(result['wait'])}")
    print(
        f"{'pacer lateness, server side (ms)':44}p50 {lateness.get('p50', float('nan')):7.2f}  "
        f"p95 {lateness.get('p95', float('nan')):7.2f}  max {lateness.get('max', float('nan')):.2f}"
        f"  (skipped frames: {result['skipped']})"
    )
    print(f"{'frame arrival jitter at client (ms)':44}{fmt(result['arrival_jitter'])}")
    for n, (per, total) in cpu.items():
        label = f"server CPU, {n} echo calls"
        print(f"{label:44}{per:6.1f} % of a core per call ({total:5.1f} % total)")
    for generation, (count, mean, top) in collections.items():
        label = f"server GC, generation {generation}"
        print(f"{label:44}{count:6d} collections, mean {mean * 1000:6.2f} ms, longest <= {top} s")


if __name__ == "__main__":
    asyncio.run(main())

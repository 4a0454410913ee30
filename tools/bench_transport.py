"""Transport benchmark: omnirtc loopback calls vs a stock aiortc echo server, in one run.

Measures, for each server (each in its own process, the same client for both):
  * offer-to-connected time (POST offer .. ICE+DTLS connected), sequential calls;
  * audio round trip: a 40 ms beep each second, from the frame leaving the client to the
    decoded frame arriving back (two Opus hops through the server), p50/p95;
  * server CPU per call with 1, 5 and 10 concurrent calls sending continuous speech-like audio.

Usage: .venv/bin/python tools/bench_transport.py [--seconds 20] [--calls 1,5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchlib import (
    FRAME,
    RATE,
    BenchCall,
    ScriptTrack,
    ServerProcess,
    fmt,
    free_port,
    omnirtc_server,
    onsets,
    pct,
    stock_server,
)

BEEP_EVERY = 50  # frames: one beep per second
_T = np.arange(FRAME) / RATE
_BEEP = (0.5 * np.sin(2 * np.pi * 1000 * _T)).astype(np.float32)
_QUIET = np.zeros(FRAME, dtype=np.float32)


def beeps(k: int) -> NDArray[np.float32]:
    return _BEEP if k % BEEP_EVERY in (0, 1) else _QUIET


def speech_loop() -> ScriptTrack:
    rng = np.random.default_rng(0)
    t = np.arange(RATE * 4) / RATE
    voice = 0.2 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    voice += 0.02 * rng.standard_normal(t.size)
    audio = voice.astype(np.float32)
    frames = audio.size // FRAME
    return ScriptTrack(lambda k: audio[(k % frames) * FRAME : (k % frames + 1) * FRAME])


class Target:
    def __init__(self, name: str, server: ServerProcess, url: str, body: dict[str, object]) -> None:
        self.name = name
        self.server = server
        self.url = url
        self.body = body


async def connect_times(target: Target, count: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            call = BenchCall(ScriptTrack(lambda k: _QUIET))
            await call.start(http, target.url, target.body)
            times.append(call.connect_ms)
            await call.close()
            await asyncio.sleep(0.2)
    return times


async def round_trips(target: Target, seconds: float, immediate: bool) -> list[float]:
    track = ScriptTrack(beeps)
    call = BenchCall(track, immediate_jitter_buffer=immediate)
    async with aiohttp.ClientSession() as http:
        await call.start(http, target.url, target.body)
        start = time.monotonic()
        await asyncio.sleep(seconds)
        await call.close()
    rtts = []
    sent = sorted((t, k) for k, t in track.sent.items() if k % BEEP_EVERY == 0)
    for arrived in onsets(call.received, since=start + 1.0):
        before = [t for t, _ in sent if t <= arrived]
        if before and arrived - before[-1] < 0.9:
            rtts.append((arrived - before[-1]) * 1000)
    return rtts


async def cpu_per_call(target: Target, calls: int, seconds: float) -> tuple[float, float]:
    """Server CPU (% of one core) per call, and in total."""
    group = [BenchCall(speech_loop()) for _ in range(calls)]
    async with aiohttp.ClientSession() as http:
        for call in group:
            await call.start(http, target.url, target.body)
        await asyncio.sleep(2.0)
        cpu0, wall0 = target.server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = target.server.cpu_seconds(), time.monotonic()
        await asyncio.gather(*(c.close() for c in group))
    total = (cpu1 - cpu0) / (wall1 - wall0) * 100
    return total / calls, total


async def measure(target: Target, seconds: float, loads: list[int]) -> dict[str, object]:
    async with target.server:
        result: dict[str, object] = {
            "connect": await connect_times(target, 10),
            "rtt": await round_trips(target, seconds, immediate=True),
            "rtt_stock_client": await round_trips(target, seconds, immediate=False),
        }
        for n in loads:
            result[f"cpu{n}"] = await cpu_per_call(target, n, min(seconds, 10.0))
            await asyncio.sleep(1.0)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--calls", default="1,5,10")
    args = parser.parse_args()
    loads = [int(n) for n in args.calls.split(",")]
    ours_port, stock_port = free_port(), free_port()
    targets = [
        Target(
            "omnirtc (loopback mode)",
            omnirtc_server(ours_port),
            f"http://127.0.0.1:{ours_port}/v1/calls",
            {"session": {"mode": "loopback"}},
        ),
        Target(
            "stock aiortc echo",
            stock_server(stock_port),
            f"http://127.0.0.1:{stock_port}/offer",
            {},
        ),
    ]
    results = {t.name: await measure(t, args.seconds, loads) for t in targets}
    ours, stock = (results[t.name] for t in targets)
    print(f"\ntransport benchmark ({args.seconds:.0f} s of beeps per figure; aiortc client)")
    print(f"{'':34}{'omnirtc':>34}{'stock aiortc':>34}")
    rows = (
        ("connect", "offer -> connected (ms)"),
        ("rtt", "round trip, client JB immediate"),
        ("rtt_stock_client", "round trip, client JB stock"),
    )
    for key, label in rows:
        print(f"{label:34}{fmt(ours[key]):>34}{fmt(stock[key]):>34}")  # type: ignore[arg-type]
    for n in loads:
        (o_per, o_tot), (s_per, s_tot) = ours[f"cpu{n}"], stock[f"cpu{n}"]  # type: ignore[misc]
        line = f"{o_per:6.1f} %/call ({o_tot:5.1f} % total)"
        base = f"{s_per:6.1f} %/call ({s_tot:5.1f} % total)"
        print(f"{'server CPU, ' + str(n) + ' calls':34}{line:>34}{base:>34}")
    o_rtt, s_rtt = pct(ours["rtt"], 50), pct(stock["rtt"], 50)  # type: ignore[arg-type]
    print(f"\nround trip p50: omnirtc {o_rtt:.1f} ms vs stock {s_rtt:.1f} ms")
    print(f"  -> x{s_rtt / o_rtt:.2f} faster")
    for n in loads:
        o, s = ours[f"cpu{n}"][0], stock[f"cpu{n}"][0]  # type: ignore[index]
        print(f"CPU per call at {n}: omnirtc {o:.1f} % vs stock {s:.1f} % -> x{s / o:.2f} less")


if __name__ == "__main__":
    asyncio.run(main())

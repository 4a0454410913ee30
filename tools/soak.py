"""Soak: N calls for T minutes against one server, sampled over time and printed as a table.

Usage: .venv/bin/python tools/soak.py --calls 10 --minutes 60 [--every 60] [--engine echo]

The server runs in this process (on uvloop where available, as the service does), so its RSS,
open files, threads and asyncio tasks are this process's own; the callers run in a child
process (``python -m tools.soak callers ...``), so none of their memory or CPU is counted. Each
caller talks in bursts (2 s of voiced audio, 4 s of quiet, repeated) and the server's engine
answers; unit lateness comes from each call's snapshot (``GET /v1/calls/{id}``: p95 and max over
the call's last 600 units), packet loss from its counters. At the end the callers hang up and
one more row shows what is left once every call has ended.

tests/integration/test_soak.py runs the same pieces (3 calls x 3 minutes) and asserts flat
memory and no task growth; BENCHMARKS.md reports a long run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchlib import FRAME, RATE, ROOT, BenchCall, ScriptTrack, free_port

BURST_S = 2.0
QUIET_S = 4.0


def talk_in_bursts(seed: int) -> ScriptTrack:
    """A track that says something voiced for BURST_S, then is quiet for QUIET_S, forever."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * BURST_S)) / RATE
    f0 = 130 + 20 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    voiced = voiced * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2))
    voiced += 0.01 * rng.standard_normal(t.size)
    burst = (0.25 * voiced / np.max(np.abs(voiced))).astype(np.float32)
    script = np.concatenate([burst, np.zeros(int(RATE * QUIET_S), dtype=np.float32)])
    frames = script.size // FRAME

    def chunk(k: int) -> NDArray[np.float32]:
        i = k % frames
        return script[i * FRAME : (i + 1) * FRAME]

    return ScriptTrack(chunk)


# ---------------------------------------------------------------- the callers (child process)


async def run_callers(url: str, calls: int, seconds: float) -> None:
    """Hold ``calls`` calls for ``seconds``, then hang up; reports on stdout, one JSON a line."""
    held: list[BenchCall] = []
    async with aiohttp.ClientSession() as http:
        try:
            for i in range(calls):
                call = BenchCall(talk_in_bursts(seed=i))
                held.append(call)
                await call.start(http, f"{url}/v1/calls", {"session": {}})
                print(json.dumps({"call_id": call.call_id}), flush=True)
                await asyncio.sleep(0.5)
            await asyncio.sleep(seconds)
            heard = [
                round(sum(c.size for _, c in call.received if np.abs(c).max() > 0.02) / RATE, 1)
                for call in held
            ]
            for call in held:
                async with http.delete(f"{url}/v1/calls/{call.call_id}") as r:
                    r.raise_for_status()
            print(json.dumps({"done": True, "heard_s": heard}), flush=True)
        finally:
            for call in held:
                await call.close()


class CallerProcess:
    """The callers' child process, and what it reported."""

    def __init__(self, url: str, calls: int, seconds: float, nice: int = 0) -> None:
        self._args = [
            "nice", "-n", str(nice), sys.executable, "-m", "tools.soak", "callers", "--url", url,
            "--calls", str(calls), "--seconds", str(seconds),
        ]  # fmt: skip
        self.call_ids: list[str] = []
        self.summary: dict[str, Any] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CallerProcess:
        self._proc = await asyncio.create_subprocess_exec(
            *self._args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read(self._proc), name="soak-callers-reader")
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            message = json.loads(line)
            if "call_id" in message:
                self.call_ids.append(message["call_id"])
            else:
                self.summary = message

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def wait(self, timeout_s: float) -> int:
        assert self._proc is not None
        assert self._reader is not None
        async with asyncio.timeout(timeout_s):
            await self._reader
            return await self._proc.wait()

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            with contextlib.suppress(ProcessLookupError):
                try:
                    async with asyncio.timeout(10):
                        await self._proc.wait()
                except TimeoutError:
                    self._proc.kill()
                    await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


# ---------------------------------------------------------------- the samples (server process)


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    calls: int
    """Calls in the ``active`` state."""
    rss_mib: float
    fds: int
    threads: int
    tasks: int
    units: int
    late_p95_ms: float
    late_max_ms: float
    lost_ms: int
    ended: str = ""
    """Why calls that are no longer active ended (``reason:count``)."""
    load: float = 0.0
    """The machine's 1-minute load average (other work competes for the same cores)."""


async def sample(
    http: aiohttp.ClientSession, url: str, call_ids: Sequence[str], since: float
) -> Sample:
    """This process's figures now, and the calls' (through the API)."""
    me = psutil.Process(os.getpid())
    snapshots = []
    for call_id in call_ids:
        async with http.get(f"{url}/v1/calls/{call_id}") as r:
            if r.status == 200:
                snapshots.append(await r.json())
    late = [s["timings_ms"]["late"] for s in snapshots if s["timings_ms"]["late"]]
    reasons = Counter(s["end_reason"] or s["state"] for s in snapshots if s["state"] != "active")
    return Sample(
        t_s=round(time.monotonic() - since, 1),
        calls=sum(s["state"] == "active" for s in snapshots),
        rss_mib=round(me.memory_info().rss / 2**20, 1),
        fds=me.num_fds(),
        threads=me.num_threads(),
        tasks=len(asyncio.all_tasks()),
        units=sum(s["counters"]["units"] for s in snapshots),
        late_p95_ms=max((x["p95"] for x in late), default=0.0),
        late_max_ms=max((x["max"] for x in late), default=0.0),
        lost_ms=sum(s["counters"]["audio_lost_ms"] for s in snapshots),
        ended=" ".join(f"{k}:{v}" for k, v in sorted(reasons.items())),
        load=os.getloadavg()[0],
    )


async def soak(
    url: str,
    calls: int,
    seconds: float,
    every_s: float,
    *,
    on_sample: Callable[[Sample], None] = lambda s: None,
    callers_nice: int = 0,
) -> tuple[list[Sample], dict[str, Any] | None]:
    """Run the callers against ``url`` and sample every ``every_s`` until they hang up; the
    last sample is taken a few seconds after the calls ended."""
    samples: list[Sample] = []
    async with (
        aiohttp.ClientSession() as http,
        CallerProcess(url, calls, seconds, callers_nice) as callers,
    ):
        began = time.monotonic()
        samples.append(await sample(http, url, [], began))
        on_sample(samples[-1])
        next_at = began + every_s
        while callers.running and callers.summary is None:
            await asyncio.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
            if time.monotonic() >= next_at:
                samples.append(await sample(http, url, callers.call_ids, began))
                on_sample(samples[-1])
                next_at += every_s
        await callers.wait(timeout_s=60)
        await asyncio.sleep(5)  # the calls' teardown
        samples.append(await sample(http, url, callers.call_ids, began))
        on_sample(samples[-1])
        return samples, callers.summary


HEADER = (
    "| t (min) | calls | RSS (MiB) | open fds | threads | asyncio tasks | units "
    "| unit lateness p95 / max (ms) | audio lost (ms) | ended | load |"
)


def row(s: Sample) -> str:
    return (
        f"| {s.t_s / 60:6.1f} | {s.calls} | {s.rss_mib:.1f} | {s.fds} | {s.threads} | {s.tasks} "
        f"| {s.units} | {s.late_p95_ms:.1f} / {s.late_max_ms:.1f} | {s.lost_ms} | {s.ended} "
        f"| {s.load:.1f} |"
    )


def table(samples: Sequence[Sample]) -> str:
    rule = "|---" * (HEADER.count("|") - 1) + "|"
    return "\n".join([HEADER, rule, *(row(s) for s in samples)])


# ---------------------------------------------------------------- entry point


async def _serve_and_soak(args: argparse.Namespace) -> None:
    from aiohttp import web

    from omni.engines import build_engine
    from omni.pool import ReplicaPool
    from signaling.app import create_app
    from signaling.settings import load_settings

    settings = load_settings(
        args.config,
        os.environ,
        {
            "engine.name": args.engine,
            "webrtc.host_addresses": ["127.0.0.1"],
            "server.max_calls": max(args.calls, 10),
        },
    )
    engine = build_engine(settings.engine, settings.server.max_calls)
    runner = web.AppRunner(create_app(settings, ReplicaPool(engine, settings.engine.max_queue)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(1200):
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
        print(f"soak: {args.calls} calls x {args.minutes} min, engine {args.engine}", flush=True)
        print(HEADER, flush=True)
        samples, summary = await soak(
            url,
            args.calls,
            args.minutes * 60,
            args.every,
            on_sample=lambda s: print(row(s), flush=True),
            callers_nice=args.callers_nice,
        )
        print("\n" + table(samples))
        print(f"\ncallers: {summary}")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    callers = sub.add_parser("callers", help="(internal) the child process that makes the calls")
    callers.add_argument("--url", required=True)
    callers.add_argument("--calls", type=int, required=True)
    callers.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--engine", default="echo")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument(
        "--callers-nice",
        type=int,
        default=5,
        help="run the callers' process at this niceness, so the server measured comes first",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Why a connection ends (consent expired, DTLS closed) is logged by aioice/aiortc at INFO.
    for name in ("aioice.ice", "aiortc.rtcdtlstransport"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.command == "callers":
        asyncio.run(run_callers(args.url, args.calls, args.seconds))
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_and_soak(args))
    else:
        uvloop.run(_serve_and_soak(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

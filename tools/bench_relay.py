"""/v1/realtime sessions through a gateway vs straight to a server, side by side.

Starts a Redis, one `omnirtc serve --role worker` and one `--role gateway` process, and one
`omnirtc serve` (single role) process, all with the echo engine.  Then, for each count in
--sessions, opens that many WebSocket sessions at once on each path (the gateway first, then
the single server, then the gateway again: the shared machine drifts) and streams --seconds
one-second `input.append` frames per session, paced like a microphone.  Reports, per path:

- append -> unit event: from sending a unit's append to the first event about that unit
  (``response.listen`` or the spoken reply's first delta): the unit loop, the echo step and,
  through the gateway, two more hops;
- the CPU the gateway process used per session (its user + system time over the streaming,
  as a share of one core), and the worker's or the server's.

    .venv/bin/python -m tools.bench_relay --sessions 1,8 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from tools.bench_cluster import start, start_redis, stop
from tools.benchlib import free_port, pct

RATE = 16_000


@dataclass
class Path:
    name: str
    url: str
    pids: dict[str, int]
    """Processes whose CPU is reported (name -> pid)."""
    latencies: list[float] = field(default_factory=list)
    spoken: int = 0
    """Audio deltas (about a second of reply each) that came back."""
    cpu: dict[str, list[float]] = field(default_factory=dict)
    """Process name -> share of one core per session, one value per run."""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audio_frame(index: int, seed: int) -> str:
    """Two seconds of a voice-like tone, then two of near silence: the echo engine says each
    tone back in the pause, so replies (24 kHz audio deltas) flow as well."""
    rng = np.random.default_rng(seed)
    noise = 0.003 * rng.standard_normal(RATE)
    if index % 4 < 2:
        noise += 0.2 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)
    return base64.b64encode(noise.astype("<f4").tobytes()).decode()


async def session(
    http: aiohttp.ClientSession, url: str, seconds: int, seed: int
) -> tuple[list[float], int]:
    """One session: the append -> first event latency of each unit, and the audio deltas
    that came back."""
    sent: dict[int, float] = {}
    first: dict[int, float] = {}
    spoken = 0
    async with http.ws_connect(f"{url}/v1/realtime?mode=audio", protocols=("map.realtime",)) as ws:
        await _until(ws, "session.queue_done")
        await ws.send_json({"type": "session.init", "payload": {}})
        await _until(ws, "session.created")
        frames = [audio_frame(i, seed + i) for i in range(seconds)]

        async def read() -> None:
            nonlocal spoken
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    return
                event = message.json()
                spoken += event["type"] == "response.output_audio.delta"
                unit = event.get("unit")
                if isinstance(unit, int) and unit not in first:
                    first[unit] = time.perf_counter()

        reader = asyncio.create_task(read())
        try:
            start_at = time.perf_counter()
            for i, frame in enumerate(frames):
                await asyncio.sleep(max(0.0, start_at + i - time.perf_counter()))
                sent[i] = time.perf_counter()
                await ws.send_json({"type": "input.append", "input": {"audio": frame}})
            await asyncio.sleep(2.0)
            await ws.send_json({"type": "session.close", "reason": "done"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await reader
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return [first[u] - sent[u] for u in sorted(sent) if u in first], spoken


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        event: dict[str, Any] = await ws.receive_json(timeout=30)
        if event["type"] == kind:
            return event
        if event["type"] == "error":
            raise RuntimeError(f"refused: {event}")


async def measure(path: Path, sessions: int, seconds: int) -> None:
    async with aiohttp.ClientSession() as http:
        before = {name: cpu_seconds(pid) for name, pid in path.pids.items()}
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(session(http, path.url, seconds, seed=17 * i) for i in range(sessions))
        )
        wall = time.perf_counter() - t0
        for name, pid in path.pids.items():
            share = (cpu_seconds(pid) - before[name]) / wall / sessions * 100
            path.cpu.setdefault(name, []).append(share)
    for latencies, spoken in results:
        path.latencies += latencies
        path.spoken += spoken


async def wait_up(http: aiohttp.ClientSession, url: str, key: str) -> None:
    async with asyncio.timeout(120):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as r:
                    body = await r.json()
                    if body.get(key):
                        return
            await asyncio.sleep(0.1)


async def run(counts: list[int], seconds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis, redis_url = await start_redis(tmp)
        room = str(max(counts) + 2)
        common = {"OMNIRTC_SERVER__MAX_CALLS": room, "OMNIRTC_ENGINE__REPLICAS": room}
        processes = [redis]
        try:
            await asyncio.sleep(0.3)
            ports = {name: free_port() for name in ("worker", "gateway", "single")}
            worker = await start(
                [sys.executable, "-m", "signaling", "serve", "--role", "worker",
                 "--engine", "echo", "--port", str(ports["worker"])],
                {**common, "OMNIRTC_CLUSTER__REDIS_URL": redis_url,
                 "OMNIRTC_CLUSTER__WORKER_ID": "w0"},
            )  # fmt: skip
            gateway = await start(
                [sys.executable, "-m", "signaling", "serve", "--role", "gateway",
                 "--port", str(ports["gateway"])],
                {"OMNIRTC_CLUSTER__REDIS_URL": redis_url},
            )  # fmt: skip
            single = await start(
                [sys.executable, "-m", "signaling", "serve", "--engine", "echo",
                 "--port", str(ports["single"])],
                common,
            )  # fmt: skip
            processes += [worker, gateway, single]
            url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            async with aiohttp.ClientSession() as http:
                await wait_up(http, url["gateway"], "workers_ready")
                await wait_up(http, url["single"], "ready")
            for count in counts:
                via = Path(
                    "via gateway", url["gateway"], {"gateway": gateway.pid, "worker": worker.pid}
                )
                direct = Path("direct", url["single"], {"server": single.pid})
                for path in (via, direct, via):
                    await measure(path, count, seconds)
                report(count, seconds, [via, direct])
        finally:
            await stop(processes[1:])
            await stop(processes[:1])


def report(count: int, seconds: int, paths: list[Path]) -> None:
    print(f"{count} session(s) at once, {seconds} units each:")
    for path in paths:
        ms = [v * 1000 for v in path.latencies]
        cpu = "  ".join(
            f"{name} {np.mean(shares):5.1f} % of a core per session"
            for name, shares in path.cpu.items()
        )
        print(
            f"  {path.name:12s} append -> unit event p50 {pct(ms, 50):6.1f}  p95 {pct(ms, 95):6.1f}"
            f"  p99 {pct(ms, 99):6.1f} ms (n={len(ms)}, {path.spoken} s of replies)   {cpu}"
        )
    via, direct = paths
    extra = pct(via.latencies, 50) - pct(direct.latencies, 50)
    print(f"  the gateway adds {extra * 1000:+.1f} ms p50")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,8", help="sessions at once, e.g. 1,8")
    parser.add_argument("--seconds", type=int, default=15, help="units streamed per session")
    args = parser.parse_args()
    await run([int(x) for x in args.sessions.split(",")], args.seconds)


if __name__ == "__main__":
    asyncio.run(main())

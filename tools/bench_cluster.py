"""Admission through a gateway with N worker processes (echo engine), on a real Redis.

For each N in --workers it starts a Redis (its own port, no persistence), N workers
(`omnirtc serve --role worker`) and a gateway (`--role gateway`), each its own process, then:

1. claim: the registry's atomic slot claim (one Lua script) round trip, sequential and with
   --concurrency clients at once, each claim released again; without an API key, and with a
   key that has a call limit and a call token (the script also counts the key's live calls
   and marks the token spent);
2. offers: --calls offers POSTed to the gateway by --concurrency clients at once; each is
   claimed, forwarded to its worker, answered there (aiortc) and relayed back.  Reports the
   offer -> answer latency and calls admitted per second, and how the calls were spread.

The offered calls never connect (the benchmark is about admission): they are hung up at
the end.  Every worker has room for all of them, so none is refused.

    .venv/bin/python -m tools.bench_cluster --workers 1,2,4 --calls 120 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from realtime.patches import install_patches
from signaling.cluster.config import ClusterSettings
from signaling.cluster.registry import Holder, RedisRegistry
from tools.benchlib import ROOT, free_port, pct


def stats(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {pct(ms, 50):7.2f}  p95 {pct(ms, 95):7.2f}  p99 {pct(ms, 99):7.2f}  "
        f"max {max(ms):7.2f} ms  (n={len(ms)})"
    )


async def start(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, "OMNIRTC_LOGGING__LEVEL": "WARNING", **env},
        stdout=asyncio.subprocess.DEVNULL,
    )


async def stop(processes: list[asyncio.subprocess.Process]) -> None:
    for p in processes:
        if p.returncode is None:
            p.terminate()
    for p in processes:
        try:
            async with asyncio.timeout(20):
                await p.wait()
        except TimeoutError:
            p.kill()
            await p.wait()


async def wait_ready(http: aiohttp.ClientSession, url: str, workers: int) -> None:
    async with asyncio.timeout(120):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as r:
                    if (await r.json()).get("workers_ready") == workers:
                        return
            await asyncio.sleep(0.1)


async def offer_sdp() -> str:
    install_patches()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def bench_claims(redis_url: str, rounds: int, concurrency: int) -> None:
    registry = RedisRegistry.connect(ClusterSettings(redis_url=redis_url, key_prefix="bench"))
    await registry.heartbeat(
        "w",
        {"url": "http://x", "slots": concurrency, "max_queue": 0, "ready": 1},
        [],
        ttl_s=60,
        grace_s=60,
    )
    # A key with a call limit (and a call token) makes the claim count the key's live calls
    # and mark the token spent; its limit is never reached here.
    holders = {
        "no key": Holder(),
        "key": Holder(key="bench", max_calls=concurrency, token="", token_ttl_s=60),
    }
    try:
        for (label, holder), clients in itertools.product(
            holders.items(), sorted({1, concurrency})
        ):
            took: list[float] = []

            async def client(
                index: int,
                took: list[float] = took,
                each: int = rounds // clients,
                holder: Holder = holder,
            ) -> None:
                for i in range(each):
                    call = f"call_{index}_{i}"
                    token = replace(holder, token=call) if holder.key else holder
                    t0 = time.perf_counter()
                    claim = await registry.claim(call, 0, holder=token)
                    took.append(time.perf_counter() - t0)
                    assert claim.worker_id == "w", claim
                    await registry.release("w", call)

            t0 = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(clients)))
            wall = time.perf_counter() - t0
            print(
                f"  claim ({label:6s}), {clients:2d} client(s): {stats(took)}"
                f"  {len(took) / wall:7.0f}/s"
            )
    finally:
        await registry.close()


async def bench_offers(
    http: aiohttp.ClientSession, gateway: str, sdp: str, calls: int, concurrency: int
) -> list[str]:
    took: list[float] = []
    call_ids: list[str] = []
    refused = Counter[int]()
    todo = iter(range(calls))

    async def client() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            async with http.post(f"{gateway}/v1/calls", json={"sdp": sdp, "type": "offer"}) as r:
                body = await r.json()
                if r.status != 201:
                    refused[r.status] += 1
                    continue
            took.append(time.perf_counter() - t0)
            call_ids.append(body["call_id"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    print(f"  offer -> answer via gateway: {stats(took)}")
    print(f"  admitted {len(took)} calls in {wall:.2f} s: {len(took) / wall:.1f} calls/s", end="")
    print(f"  (refused: {dict(refused)})" if refused else "")
    return call_ids


async def start_redis(folder: str) -> tuple[asyncio.subprocess.Process, str]:
    """A redis-server on a free loopback port, without persistence; and its URL."""
    port = free_port()
    redis = await asyncio.create_subprocess_exec(
        shutil.which("redis-server") or "/usr/bin/redis-server",
        "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", folder, "--loglevel", "warning",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return redis, f"redis://127.0.0.1:{port}/0"


async def run(workers: int, calls: int, concurrency: int, claims: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis, redis_url = await start_redis(tmp)
        per_worker = calls + 5
        processes = [redis]
        try:
            await asyncio.sleep(0.3)
            cluster_env = {"OMNIRTC_CLUSTER__REDIS_URL": redis_url}
            for i in range(workers):
                port = free_port()
                processes.append(
                    await start(
                        [sys.executable, "-m", "signaling", "serve", "--role", "worker",
                         "--engine", "echo", "--port", str(port)],
                        {
                            **cluster_env,
                            "OMNIRTC_SERVER__MAX_CALLS": str(per_worker),
                            "OMNIRTC_WEBRTC__HOST_ADDRESSES": '["127.0.0.1"]',
                            "OMNIRTC_CLUSTER__WORKER_ID": f"w{i}",
                        },
                    )
                )  # fmt: skip
            gw_port = free_port()
            processes.append(
                await start(
                    [sys.executable, "-m", "signaling", "serve", "--role", "gateway",
                     "--port", str(gw_port)],
                    {**cluster_env, "OMNIRTC_SERVER__MAX_CONNECTIONS": "4096"},
                )
            )  # fmt: skip
            gateway = f"http://127.0.0.1:{gw_port}"
            sdp = await offer_sdp()
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, gateway, workers)
                print(f"{workers} worker(s), echo engine:")
                await bench_claims(redis_url, claims, concurrency)
                call_ids = await bench_offers(http, gateway, sdp, calls, concurrency)
                registry = RedisRegistry.connect(ClusterSettings(redis_url=redis_url))
                spread = Counter([await registry.owner(c) for c in call_ids])
                await registry.close()
                print(f"  calls per worker: {dict(sorted(spread.items()))}")
                await asyncio.gather(
                    *(http.delete(f"{gateway}/v1/calls/{c}") for c in call_ids),
                    return_exceptions=True,
                )
        finally:
            await stop(processes[1:])  # the workers leave the registry before Redis stops
            await stop(processes[:1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2,4")
    parser.add_argument("--calls", type=int, default=120, help="offers per run")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once")
    parser.add_argument("--claims", type=int, default=2000, help="registry claims per run")
    args = parser.parse_args()
    for n in (int(x) for x in args.workers.split(",")):
        await run(n, args.calls, args.concurrency, args.claims)


if __name__ == "__main__":
    asyncio.run(main())

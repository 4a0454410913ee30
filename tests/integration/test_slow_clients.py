"""Slow clients (slowloris) against the server as the entry point runs it: request headers
and bodies that trickle in are timed out, open connections are capped, and /healthz and
real requests stay served meanwhile.  Timeouts are lowered so each test takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from tests.integration.rawhttp import HOST, exchange, free_port, read_response, served
from tests.support.caller import make_offer

REQUEST_START = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def trickle(port: int, interval_s: float, give_up_s: float) -> float | None:
    """Open a connection and send request headers one byte per ``interval_s``, never
    finishing them.  Returns how long the server kept the connection open (None if it
    still was after ``give_up_s``)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    opened = loop.time()
    try:
        writer.write(REQUEST_START)
        while loop.time() - opened < give_up_s:
            try:
                if await asyncio.wait_for(reader.read(4096), interval_s) == b"":
                    return loop.time() - opened
            except TimeoutError:
                pass
            writer.write(b"a")
            await writer.drain()
        return None
    except ConnectionError:
        return loop.time() - opened
    finally:
        writer.close()


async def attack(
    group: asyncio.TaskGroup, port: int, count: int, interval_s: float, give_up_s: float
) -> list[asyncio.Task[float | None]]:
    """``count`` trickling connections in ``group``, started one after the other (as fast
    as the loop allows)."""
    tasks = []
    for _ in range(count):
        tasks.append(group.create_task(trickle(port, interval_s, give_up_s)))
        await asyncio.sleep(0)
    return tasks


async def healthz_latencies(url: str, count: int, pause_s: float) -> list[float]:
    """``count`` GET /healthz, each on a new connection; their latencies in seconds."""
    latencies = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(count):
            start = time.perf_counter()
            async with http.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                assert r.status == 200
                assert await r.json() == {"status": "ok"}
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(pause_s)
    return latencies


def _summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    return f"p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms over {len(ms)}"


async def test_slow_headers_are_timed_out_while_healthz_stays_fast() -> None:
    async with served(server__header_timeout_s=1.0) as server:
        async with asyncio.TaskGroup() as group:
            tasks = await attack(group, server.port, 200, interval_s=0.25, give_up_s=6.0)
            await asyncio.sleep(0.3)
            assert server.guard.open >= 150, "the slow connections are open"
            latencies = await healthz_latencies(server.url, 10, pause_s=0.05)
        lifetimes = [t.result() for t in tasks]
        print(f"/healthz during 200 slow-header connections: {_summary(latencies)}")
        assert max(latencies) < 1.0, _summary(latencies)
        assert all(t is not None for t in lifetimes), "every slow connection was closed"
        kept = [t for t in lifetimes if t is not None]
        print(f"slow connections closed after {min(kept):.2f}..{max(kept):.2f} s")
        # Not before the timeout (the client starts its watch when its connect returns,
        # which on a busy machine can be a little after the server's timer started).
        assert min(kept) >= 0.75
        assert max(kept) < 1.0 + 1.5
        assert server.guard.open == 0


async def test_a_kept_alive_connection_must_send_its_next_headers_in_time() -> None:
    async with served(server__header_timeout_s=1.0) as server:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
            answered = loop.time()
            await asyncio.sleep(0.5)  # idle, then the next request trickles in
            writer.write(REQUEST_START)
            with contextlib.suppress(ConnectionError):
                for _ in range(20):
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                            break
            assert 0.9 <= loop.time() - answered < 1.6
        finally:
            writer.close()


async def test_at_the_connection_cap_slow_connections_make_room_for_new_ones() -> None:
    # A header timeout far beyond the test: only the cap keeps the server reachable.
    async with served(server__header_timeout_s=60.0, server__max_connections=50) as server:
        async with asyncio.TaskGroup() as group:
            tasks = await attack(group, server.port, 200, interval_s=0.25, give_up_s=2.0)
            await asyncio.sleep(0.3)
            assert server.guard.open <= 50
            latencies = await healthz_latencies(server.url, 10, pause_s=0.05)
            # A real request on a connection of its own, too.
            async with aiohttp.ClientSession() as http:
                offer = {"sdp": "not sdp", "type": "offer"}
                async with http.post(f"{server.url}/v1/calls", json=offer) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["code"] == "invalid_sdp"
        print(f"/healthz at the cap of 50 with 200 slow connections: {_summary(latencies)}")
        assert max(latencies) < 1.0, _summary(latencies)
        closed = [t for t in (task.result() for task in tasks) if t is not None]
        assert len(closed) >= 150, "the longest-waiting slow connections were closed"
        assert server.guard.evicted >= 150


async def test_when_every_connection_is_inside_a_request_new_ones_get_503() -> None:
    head = (
        b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    async with served(server__max_connections=8, server__body_timeout_s=1.5) as server:
        streams = [await asyncio.open_connection(HOST, server.port) for _ in range(8)]
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        for _, writer in streams:
            writer.write(head)  # headers complete, the body never
        await asyncio.sleep(0.2)
        refused, closed = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.status == 503
        assert refused.json()["error"]["code"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
        assert closed
        # The stalled bodies time out: 408, and their connections close.
        for reader, writer in streams:
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.status == 408
            assert response.json()["error"]["code"] == "body_timeout"
            assert response.headers["connection"].lower() == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        assert 1.4 <= loop.time() - sent_at < 4.0
        latencies = await healthz_latencies(server.url, 3, pause_s=0)
        assert max(latencies) < 1.0


async def test_a_slow_but_legitimate_upload_within_the_bounds_works() -> None:
    offer = json.dumps({"sdp": await make_offer(), "type": "offer"}).encode()
    async with served(server__header_timeout_s=1.0, server__body_timeout_s=3.0) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            head = (
                b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(offer)
            )
            for i in range(0, len(head), len(head) // 3 + 1):  # headers over 0.6 s
                writer.write(head[i : i + len(head) // 3 + 1])
                await asyncio.sleep(0.2)
            step = len(offer) // 10 + 1
            for i in range(0, len(offer), step):  # the body over 2 s
                writer.write(offer[i : i + step])
                await writer.drain()
                await asyncio.sleep(0.2)
            created = await asyncio.wait_for(read_response(reader), 10)
            assert created.status == 201, created.body
            call_id = created.json()["call_id"]
            # The connection stays usable (keep-alive) for the next request.
            writer.write(b"DELETE /v1/calls/%s HTTP/1.1\r\nHost: x\r\n\r\n" % call_id.encode())
            deleted = await asyncio.wait_for(read_response(reader), 20)
            assert deleted.status == 204
        finally:
            writer.close()


ROOT = Path(__file__).resolve().parents[2]


async def test_the_entry_point_under_more_slow_connections_than_it_may_open_files() -> None:
    """The bug report, replayed: `omnirtc serve` with its default settings (echo engine),
    allowed 256 open files, and 300 connections trickling their headers a byte at a time.
    It must cap its connections below its file limit and stay reachable."""
    port = free_port()
    env = {
        **os.environ,
        "OMNIRTC_ENGINE__NAME": "echo",
        "OMNIRTC_SERVER__PORT": str(port),
        "OMNIRTC_SERVER__MAX_CALLS": "2",
        "OMNIRTC_WEBRTC__HOST_ADDRESSES": '["127.0.0.1"]',
    }
    process = await asyncio.create_subprocess_exec(
        *["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh"],
        *[sys.executable, "-m", "signaling", "serve"],
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://{HOST}:{port}"
    try:
        await _wait_until_ready(url, process)
        async with asyncio.TaskGroup() as group:
            tasks = await attack(group, port, 300, interval_s=0.25, give_up_s=3.0)
            await asyncio.sleep(0.5)
            latencies = await healthz_latencies(url, 10, pause_s=0.05)
            async with aiohttp.ClientSession() as http:
                offer = {"sdp": "not sdp", "type": "offer"}
                async with http.post(f"{url}/v1/calls", json=offer) as r:
                    assert r.status == 400
        print(f"/healthz of `omnirtc serve` under 300 slow connections: {_summary(latencies)}")
        assert max(latencies) < 1.0, _summary(latencies)
        closed = [t for t in (task.result() for task in tasks) if t is not None]
        assert len(closed) >= 300 - 96
    finally:
        if process.returncode is None:
            process.terminate()
        _, raw_stderr = await asyncio.wait_for(process.communicate(), 20)
    stderr = raw_stderr.decode()
    assert "server.max_connections lowered from 1024 to 96" in stderr, stderr
    assert "at max_connections (96)" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert " ERROR " not in stderr, stderr


async def _wait_until_ready(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert process.returncode is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.1)

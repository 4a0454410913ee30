"""Several worker processes on one machine (``cluster.processes``), one core each for media.

The parent process only supervises: it starts ``processes`` workers (``python -m signaling
serve``) with their settings in the environment, worker i on ``server.port + i`` with its own
share of ``webrtc.udp_ports`` and its own name, restarts one that dies (after a pause), and
stops them all on SIGTERM or SIGINT.  Each child registers in Redis by itself, so gateways
spread calls over them like over workers on other machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from signaling.settings import Settings

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 2.0
STOP_TIMEOUT_S = 20.0


def child_environments(settings: Settings, base: Mapping[str, str]) -> list[dict[str, str]]:
    """The environment of each worker process (the settings it must differ in)."""
    count = settings.cluster.processes
    server, cluster = settings.server, settings.cluster
    ports = settings.webrtc.udp_ports
    share = (ports[1] - ports[0] + 1) // count if ports else 0
    if ports and share < 1:
        raise ValueError(f"webrtc.udp_ports has fewer ports than {count} processes")
    out = []
    for i in range(count):
        env = dict(base)
        env.update(
            OMNIRTC_CLUSTER__ROLE="worker",
            OMNIRTC_CLUSTER__PROCESSES="1",
            OMNIRTC_CLUSTER__REDIS_URL=cluster.redis_url,
            OMNIRTC_ENGINE__NAME=settings.engine.name,
            OMNIRTC_SERVER__HOST=server.host,
            OMNIRTC_SERVER__PORT=str(server.port + i),
        )
        if cluster.worker_id:
            env["OMNIRTC_CLUSTER__WORKER_ID"] = f"{cluster.worker_id}-{i}"
        if cluster.advertise_url:
            parts = urlsplit(cluster.advertise_url)
            port = (parts.port or (443 if parts.scheme == "https" else 80)) + i
            env["OMNIRTC_CLUSTER__ADVERTISE_URL"] = f"{parts.scheme}://{parts.hostname}:{port}"
        if ports:
            low = ports[0] + i * share
            env["OMNIRTC_WEBRTC__UDP_PORTS"] = json.dumps([low, low + share - 1])
        out.append(env)
    return out


async def supervise(settings: Settings, config: Path | None, base: Mapping[str, str]) -> int:
    """Run the worker processes until SIGTERM/SIGINT; returns the exit status."""
    try:
        environments = child_environments(settings, base)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    command = [sys.executable, "-m", "signaling", "serve"]
    if config is not None:
        command += ["--config", str(config)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("starting %d worker processes", len(environments))
    async with asyncio.TaskGroup() as tasks:
        for i, env in enumerate(environments):
            tasks.create_task(_keep_running(i, command, env, stop), name=f"worker-process-{i}")
    return 0


async def _keep_running(
    index: int, command: list[str], env: dict[str, str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        process = await asyncio.create_subprocess_exec(*command, env=env)
        log.info("worker process %d started (pid %d)", index, process.pid)
        waiting = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        if stop.is_set():
            if process.returncode is None:
                process.terminate()
                try:
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await waiting
                except TimeoutError:
                    process.kill()
                    await waiting
            return
        log.error(
            "worker process %d exited with status %s; restarting in %.0f s",
            index,
            process.returncode,
            RESTART_PAUSE_S,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESTART_PAUSE_S):
                await stop.wait()

"""A real Redis server for tests: Debian's redis-server on a free loopback port, no
persistence, started, killed and restarted (on the same port) by the test."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="omnirtc-redis-")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start (or restart, empty) the server and wait until it answers PING."""
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--loglevel", "warning",
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(10):
            while True:
                assert self.process.returncode is None, "redis-server exited"
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"PING\r\n")
                    line = await reader.readline()
                    writer.close()
                    if line.startswith(b"+PONG"):
                        return
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL: what a crash or a lost machine looks like (its data is gone)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        await self.kill()
        self._dir.cleanup()


def available() -> bool:
    return Path(REDIS_SERVER).is_file()

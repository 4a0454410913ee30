"""A server whose media ports are published, as from a container (docker run -p ...udp): the
ICE sockets bind within `webrtc.udp_ports`, and the answer carries `webrtc.announced_address`,
which a NAT in front of the server maps to the address it binds."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.conftest import ServerFactory
from tests.support.caller import Caller
from tests.support.media import silence, speechlike

PORTS = (40_100, 40_119)
PUBLISHED = "10.99.0.1"
"""The address clients are told: what a container host publishes."""
BOUND = "10.99.0.2"
"""The address the server binds: the container's own."""


def _candidates(sdp: str) -> list[tuple[str, int]]:
    return [
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp, re.M)
    ]


async def test_media_sockets_bind_within_the_published_range(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(webrtc__udp_ports=list(PORTS))
    callers = [Caller(server.url) for _ in range(3)]
    talk = np.concatenate([speechlike(1.0, seed=31), silence(0.8)])
    try:
        for caller in callers:
            await caller.call(http)
            candidates = _candidates(caller.answer_sdp)
            assert candidates, caller.answer_sdp
            assert all(PORTS[0] <= port <= PORTS[1] for _, port in candidates), candidates
        callers[0].player.play(talk)
        await callers[0].wait_for("response.output_text.delta", 8)
    finally:
        for caller in callers:
            await caller.close()


def _in_private_network_namespace() -> bool:
    """Only a loopback interface: the namespace `make test` runs the suite in (unshare -n),
    where adding addresses and a NAT rule touches nothing outside the test run."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture
def published_address() -> Iterator[None]:
    """In the test's own network namespace only: two addresses, and a NAT that sends what
    goes to PUBLISHED's media ports to BOUND (as a container host's port mapping does)."""
    if os.geteuid() != 0 or not _in_private_network_namespace():
        pytest.skip("needs root in a private network namespace (make test runs the suite so)")
    iptables = shutil.which("iptables")
    if iptables is None:
        pytest.skip("iptables is missing: `make test` installs the Debian iptables package")
    rule = [
        "OUTPUT", "-p", "udp", "-d", PUBLISHED, "--dport", f"{PORTS[0]}:{PORTS[1]}",
        "-j", "DNAT", "--to-destination", BOUND,
    ]  # fmt: skip
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    for address in (PUBLISHED, BOUND):
        run("ip", "addr", "add", f"{address}/32", "dev", "lo")
    try:
        run(iptables, "-t", "nat", "-A", *rule)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this kernel has no NAT for iptables: {exc.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([iptables, "-t", "nat", "-D", *rule], check=False, capture_output=True)
        for address in (PUBLISHED, BOUND):
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@pytest.mark.usefixtures("published_address")
async def test_a_call_reaches_the_server_through_its_published_address(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(
        webrtc__host_addresses=[BOUND],
        webrtc__udp_ports=list(PORTS),
        webrtc__announced_address=PUBLISHED,
    )
    caller = Caller(server.url)
    talk = np.concatenate([speechlike(1.2, seed=32), silence(0.8)])
    try:
        await caller.call(http)
        candidates = _candidates(caller.answer_sdp)
        assert {host for host, _ in candidates} == {PUBLISHED}, candidates
        caller.player.play(talk)
        await caller.wait_for("response.output_text.delta", 8)
        for _ in range(100):
            if caller.first_loud(0.0) is not None:
                break
            await asyncio.sleep(0.05)
        assert caller.first_loud(0.0) is not None, "the echo came back through the NAT"
    finally:
        await caller.close()


async def test_without_the_announced_address_the_bound_one_is_offered(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(webrtc__host_addresses=["127.0.0.1"])
    caller = Caller(server.url)
    try:
        await caller.call(http)
        assert {host for host, _ in _candidates(caller.answer_sdp)} == {"127.0.0.1"}
    finally:
        await caller.close()

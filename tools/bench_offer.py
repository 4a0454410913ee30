"""How long answering a large offer holds the event loop: omnirtc's Peer vs stock aiortc.

Every call on a server shares its event loop, so the longest stretch of work the loop does at
once while an offer is answered (and while its ICE checks run, the second after) is the pause
every other call hears.  Offers are a real aiortc offer with N extra host candidates per
section; the loop's hold is the CPU time its thread spent between two turns of a 1 ms
heartbeat (so other processes on the machine do not inflate it).

    .venv/bin/python tools/bench_offer.py --candidates 10,100,300 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from realtime.config import PeerConfig
from realtime.patches import install_patches, offering_host_addresses
from realtime.peer import Peer
from tools.benchlib import pct

AFTER_S = 1.0
"""How long after the answer the loop is still watched (the new call's ICE checks)."""


def inflate(sdp: str, per_section: int) -> str:
    out = []
    for line in sdp.split("\r\n"):
        out.append(line)
        if line.startswith("a=mid:"):
            out.extend(
                f"a=candidate:{i} 1 udp {2122260223 - i} 10.{i // 250}.{i % 250}.1 {40000 + i} "
                "typ host"
                for i in range(per_section)
            )
    return "\r\n".join(out)


async def make_offer() -> str:
    """A real aiortc offer: audio and the events channel, loopback candidates."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("events")
    with offering_host_addresses(("127.0.0.1",)):
        await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def _silence() -> object:
    await asyncio.sleep(3600)
    return None


async def ours(sdp: str) -> Callable[[], Awaitable[None]]:
    peer = Peer(PeerConfig(host_addresses=("127.0.0.1",)), time.monotonic)
    await peer.answer(sdp, _silence)  # type: ignore[arg-type]
    return peer.close


async def stock(sdp: str) -> Callable[[], Awaitable[None]]:
    """What a plain aiortc server does with an offer (its examples' server.py)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    with offering_host_addresses(("127.0.0.1",)):
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    return pc.close


async def measure(
    answer: Callable[[str], Awaitable[Callable[[], Awaitable[None]]]], sdp: str
) -> tuple[float, float]:
    """(answer wall time, longest loop hold) in ms."""
    held: list[float] = []
    running = True

    async def heartbeat() -> None:
        while running:
            before = time.thread_time()
            await asyncio.sleep(0.001)
            held.append(time.thread_time() - before)

    beat = asyncio.create_task(heartbeat())
    began = time.perf_counter()
    close = await answer(sdp)
    took = time.perf_counter() - began
    await asyncio.sleep(AFTER_S)
    running = False
    await beat
    await close()
    return took * 1000, max(held) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="10,100,300", help="extra candidates per section")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    install_patches()
    base = await make_offer()
    print("candidates/section  offer KB | omnirtc answer, loop hold p50/max | stock answer, hold")
    for per_section in (int(n) for n in args.candidates.split(",")):
        sdp = inflate(base, per_section)
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "stock": []}
        for _ in range(args.rounds):
            results["ours"].append(await measure(ours, sdp))
            results["stock"].append(await measure(stock, sdp))
        cells = []
        for name in ("ours", "stock"):
            took = [t for t, _ in results[name]]
            hold = [h for _, h in results[name]]
            cells.append(
                f"{pct(took, 50):6.1f} ms, hold {pct(hold, 50):5.1f} / {max(hold):5.1f} ms"
            )
        print(f"{per_section:18d}  {len(sdp) / 1024:8.1f} | {cells[0]} | {cells[1]}")


if __name__ == "__main__":
    asyncio.run(main())

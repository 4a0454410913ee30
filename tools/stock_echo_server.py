"""The baseline: a plain stock-aiortc echo server (no omnirtc code, no patches).

POST /offer with {"sdp", "type"}: the answer sends the caller's own audio track straight back,
the way aiortc's examples do.  Used by tools/bench_transport.py as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

PCS: set[RTCPeerConnection] = set()
RELAY = MediaRelay()


async def offer(request: web.Request) -> web.Response:
    params = await request.json()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    PCS.add(pc)

    @pc.on("track")
    def on_track(track: object) -> None:
        pc.addTrack(RELAY.subscribe(track))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await pc.close()
            PCS.discard(pc)

    await pc.setRemoteDescription(RTCSessionDescription(params["sdp"], params["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def on_shutdown(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in PCS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()

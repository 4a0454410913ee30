"""Run as a process: make a call, print the call id, then keep still until killed."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from tests.support.caller import Caller
from tests.support.media import speechlike


async def main(url: str) -> None:
    # Made before the call: generating it once the call runs would hold up this loop, and a
    # client that sends nothing for longer than the idle timeout has vanished.
    talk = speechlike(30.0)
    caller = Caller(url)
    async with aiohttp.ClientSession() as http:
        body = await caller.call(http)
    caller.player.play(talk)
    sys.stdout.write(body["call_id"] + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

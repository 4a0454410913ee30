"""Run as a process: make a call, print the call id, then keep still until killed."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from tests.support.caller import Caller
from tests.support.media import speechlike


async def main(url: str) -> None:
    caller = Caller(url)
    async with aiohttp.ClientSession() as http:
        body = await caller.call(http)
    caller.player.play(speechlike(30.0))
    sys.stdout.write(body["call_id"] + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

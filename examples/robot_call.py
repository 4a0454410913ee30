"""A robot's call to omnirtc: talk through the microphone (or say a file), print what the
service says, save its speech, and call again by itself if the network drops.

    python examples/robot_call.py http://server:8080 --token $OMNIRTC_TOKEN
    python examples/robot_call.py http://server:8080 --wav question.wav --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from omnirtc_client import OmniClient, file_audio, microphone


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--wav", type=Path)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    audio = file_audio(args.wav) if args.wav else microphone()
    async with OmniClient(args.url, token=args.token, reconnect=5) as call:
        print("in call", await call.start(audio))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.seconds):
                async for event in call.events():
                    if event["type"] == "response.output_text.delta":
                        print(event["delta"], end="", flush=True)
                    elif event["type"] == "input.transcript":
                        print(f"\n> {event['text']}")
                    elif event["type"].startswith("client."):
                        print(f"\n[{event['type']}]")
    call.speech.write("answer.wav")
    print(f"\nsaved {call.speech.samples.size / 48_000:.1f} s of speech to answer.wav")


if __name__ == "__main__":
    asyncio.run(main())

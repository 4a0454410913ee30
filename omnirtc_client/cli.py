"""``omnirtc call URL``: call an omnirtc server from the command line.

Sends a sound file (``--wav``) or the microphone (``--mic``), prints every event as one JSON
line on stdout, and writes the service's speech to ``--out``.  Exits 0 after the call, 1 when
the server refuses it or it is lost for good.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from aiortc import MediaStreamTrack

from omnirtc_client.client import CallEnded, ClientError, OmniClient
from omnirtc_client.media import file_audio, microphone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server, e.g. http://localhost:8080")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wav", type=Path, help="a sound file to say (any format FFmpeg reads)")
    source.add_argument("--mic", action="store_true", help="talk through the microphone")
    parser.add_argument("--out", type=Path, help="write the service's speech here (.wav, .flac)")
    parser.add_argument(
        "--token", help="API key or call token (default: $OMNIRTC_TOKEN)", default=None
    )
    parser.add_argument("--mode", choices=("engine", "loopback"), default="engine")
    parser.add_argument("--instructions", help="system prompt for engines that take one")
    parser.add_argument("--language", choices=("en", "zh"), default="en")
    parser.add_argument(
        "--seconds",
        type=float,
        help="hang up after this long (default: the file's length plus --answer-s; "
        "with --mic: until Ctrl-C)",
    )
    parser.add_argument(
        "--answer-s", type=float, default=8.0, help="time left for the answer after the file"
    )
    parser.add_argument("--reconnect", type=int, default=3, help="calls again after a loss")


async def run(args: argparse.Namespace) -> int:
    session: dict[str, str] = {"mode": args.mode, "language": args.language}
    if args.instructions:
        session["instructions"] = args.instructions
    token = args.token or os.environ.get("OMNIRTC_TOKEN") or None
    audio: MediaStreamTrack | None = None
    seconds = args.seconds
    if args.wav is not None:
        track = file_audio(args.wav)
        audio = track
        seconds = seconds if seconds is not None else track.duration_s + args.answer_s
    elif args.mic:
        audio = microphone()
    client = OmniClient(args.url, token=token, session=session, reconnect=args.reconnect)
    code = 0
    try:
        call_id = await client.start(audio)
        sys.stderr.write(f"omnirtc: in call {call_id}\n")
        printing = asyncio.create_task(_print_events(client))
        try:
            if seconds is None:
                await client.ended.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await client.ended.wait()
        finally:
            if client.ended.is_set() and client.end_reason not in ("hangup", None):
                sys.stderr.write(f"omnirtc: the call ended: {client.end_reason}\n")
                code = 1 if client.end_reason == "reconnect_failed" else 0
            await client.hangup()
            await printing
    except ClientError as exc:
        sys.stderr.write(f"omnirtc: the server refused the call: {exc}\n")
        await client.hangup()
        return 1
    except (TimeoutError, CallEnded, OSError) as exc:
        sys.stderr.write(f"omnirtc: the call failed: {exc or type(exc).__name__}\n")
        await client.hangup()
        return 1
    if args.out is not None:
        client.speech.write(args.out)
        sys.stderr.write(
            f"omnirtc: wrote {client.speech.samples.size / 48_000:.1f} s to {args.out}\n"
        )
    return code


async def _print_events(client: OmniClient) -> None:
    async for event in client.events():
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

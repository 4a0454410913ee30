"""Calls over a lossy path: loss, jitter and an outage (tests/support/lossy_link.py).

Five calls run at once against one ``echo`` server, each through its own impaired relay. Each
caller says a Piper sentence; the server says it back over the same path; the lite engine's
recogniser (pocketsphinx, with a word list) transcribes what came back. The call must stay
up, the speech stay recognisable, the reply come within a bound, and the counters (the
server's ``audio_lost_ms``, the caller's lost packets) account for what the path dropped.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import soxr
from numpy.typing import NDArray

from realtime.patches import (
    ImmediateAudioJitterBuffer,
    use_immediate_jitter_buffer,
    use_inband_fec,
)
from tests.conftest import ServerFactory
from tests.lite.models import Speaker
from tests.lite.test_lite_engine import transcribe
from tests.support.caller import Caller, call_snapshot
from tests.support.lossy_link import Impairment, LossyLink
from tests.support.media import silence

SENTENCE = "the quick brown fox jumps over the lazy dog"
WORDS = set(SENTENCE.split())
REPLY_WITHIN_S = 5.0
"""From the end of the caller's sentence to the first of it coming back (the echo engine
waits 600 ms of quiet, then a unit boundary; two Opus hops)."""


@dataclass
class Scenario:
    name: str
    impairment: Impairment
    outage_s: float = 0.0
    min_words: int = 6
    """Of the sentence's 8 distinct words, how many must be recognised in the echo."""
    immediate: bool = True
    """The caller hands each packet to its decoder at once (and counts what was lost)."""
    link: LossyLink | None = None
    caller: Caller | None = None
    jitter: ImmediateAudioJitterBuffer | None = None
    result: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("loss 5%", Impairment(loss=0.05)),
    Scenario("loss 10%", Impairment(loss=0.10)),
    Scenario("loss 20%", Impairment(loss=0.20), min_words=4),
    # Packets overtaken by later ones are late for the server's immediate jitter buffer (it
    # hands each packet on as it comes, for latency): ±50 ms of jitter on 20 ms packets (as
    # netem's, independent per packet) makes about a quarter of them late. Most are rebuilt
    # from the next packet's FEC (without it the echo kept 3-5 of the 8 words). The caller
    # keeps aiortc's own reordering jitter buffer, as a browser has an adaptive one.
    Scenario("jitter 50 ms", Impairment(delay_ms=60, jitter_ms=50), min_words=5, immediate=False),
    Scenario("outage 2 s", Impairment(), outage_s=2.0),
]


def heard(audio48k: NDArray[np.float32]) -> str:
    """What the recogniser hears in ``audio48k`` (runs in a worker process: pocketsphinx
    holds the interpreter's lock while it decodes)."""
    return transcribe(soxr.resample(audio48k, 48_000, 24_000).astype(np.float32), WORDS)


async def run_scenario(
    url: str,
    http: aiohttp.ClientSession,
    scenario: Scenario,
    speech: NDArray[np.float32],
    seed: int,
) -> None:
    link = scenario.link = LossyLink(seed)
    caller = scenario.caller = Caller(url)
    caller.edit_sent_offer = lambda sdp: link.wrap_offer(fec_offer(sdp))
    caller.edit_answer = link.wrap_answer
    caller.on_answer = use_inband_fec  # the answer asks for FEC: send it, as browsers do
    await caller.call(http)
    audio = next(t for t in caller.pc.getTransceivers() if t.kind == "audio")
    if scenario.immediate:
        scenario.jitter = use_immediate_jitter_buffer(audio.receiver)
    await caller.wait_for("session.created", 5)
    link.impair(scenario.impairment)
    await asyncio.sleep(1.0)
    if scenario.outage_s:
        link.outage(scenario.outage_s)
        await asyncio.sleep(scenario.outage_s + 1.0)
    caller.player.play(np.concatenate([speech, silence(0.1)]))
    spoke_until = time.monotonic() + speech.size / 48_000
    await asyncio.sleep(speech.size / 48_000 + 2 * REPLY_WITHIN_S)
    scenario.result = {
        "echo": caller.audio(since=spoke_until),
        "first_back_s": (caller.first_loud(spoke_until) or float("inf")) - spoke_until,
        "snapshot": await call_snapshot(http, url, caller.call_id or ""),
    }


def fec_offer(sdp: str) -> str:
    """The offer with Opus in-band FEC asked for, as browsers offer it."""
    return re.sub(
        r"(a=rtpmap:(\d+) opus/48000/2\r\n)", r"\1a=fmtp:\2 minptime=10;useinbandfec=1\r\n", sdp
    )


async def test_calls_hold_up_over_loss_jitter_and_an_outage(
    start_server: ServerFactory, http: aiohttp.ClientSession, speaker: Speaker
) -> None:
    server = await start_server(server__max_calls=len(SCENARIOS))
    speech = await asyncio.to_thread(speaker.say, SENTENCE, 48_000)
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(
                *(
                    run_scenario(server.url, http, s, speech, seed=i)
                    for i, s in enumerate(SCENARIOS)
                )
            )
    finally:
        for s in SCENARIOS:
            if s.caller is not None:
                await s.caller.close()
            if s.link is not None:
                s.link.close()
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
    try:
        loop = asyncio.get_running_loop()
        said = await asyncio.gather(
            *(loop.run_in_executor(pool, heard, s.result["echo"]) for s in SCENARIOS)
        )
    finally:
        await asyncio.to_thread(pool.shutdown)
    lines = []
    for s, text in zip(SCENARIOS, said, strict=True):
        assert s.link is not None
        counters = s.result["snapshot"]["counters"]
        lost = f"{s.jitter.lost} (late {s.jitter.dropped})" if s.jitter else "(not counted)"
        lines.append(
            f"{s.name}: heard {text!r}; reply after {s.result['first_back_s']:.2f} s; "
            f"path dropped up {s.link.up.dropped} / down {s.link.down.dropped} packets; "
            f"server audio_lost_ms {counters['audio_lost_ms']} "
            f"(repaired {counters['audio_repaired_ms']}); caller lost {lost}; "
            f"state {s.result['snapshot']['state']}; speech segments "
            f"{counters['speech_segments']}, speech out {counters['speech_out_ms']} ms "
            f"(dropped {counters['speech_dropped_ms']}, frames skipped "
            f"{counters['frames_out_skipped']}), "
            f"units {counters['units']} (dropped {counters['dropped_units']})"
        )
    report = "\n".join(lines)
    print(report)
    for s, text in zip(SCENARIOS, said, strict=True):
        assert s.link is not None
        snapshot, counters = s.result["snapshot"], s.result["snapshot"]["counters"]
        assert snapshot["state"] == "active", report
        assert len(set(text.split()) & WORDS) >= s.min_words, report
        assert s.result["first_back_s"] < REPLY_WITHIN_S, report
        # What the path dropped shows in the counters: the server's lost audio (20 ms a
        # packet), the caller's lost packets. (Other packets than RTP are few: a few %.)
        up_ms, down = s.link.up.dropped * 20, s.link.down.dropped
        assert s.link.up.passed > 200 and s.link.down.passed > 200, report  # it went this way
        assert 0.7 * up_ms - 100 <= counters["audio_lost_ms"], report
        if s.impairment.jitter_ms == 0:
            assert counters["audio_lost_ms"] <= 1.1 * up_ms + 100, report
        else:  # packets overtaken by later ones are dropped as late, and count as lost
            assert counters["audio_lost_ms"] > 1000, report
        if s.jitter is not None:
            assert 0.7 * down - 5 <= s.jitter.lost <= 1.1 * down + 5, report
        # Single lost packets (most, at these rates) are rebuilt from the next one's FEC.
        if not s.outage_s:
            assert counters["audio_repaired_ms"] >= 0.5 * counters["audio_lost_ms"], report


async def test_the_answer_asks_for_opus_fec_where_the_offer_does(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    for offered in (True, False):
        caller = Caller(server.url)
        if offered:
            caller.edit_sent_offer = fec_offer
        try:
            await caller.call(http)
        finally:
            await caller.close()
        fmtp = re.findall(r"a=fmtp:\d+ (.*)", caller.answer_sdp)
        assert any("useinbandfec=1" in line for line in fmtp) is offered, caller.answer_sdp

"""Chromium offering video only in a codec we cannot decode: the video is rejected, the call
goes on (a browser that prefers AV1 must still be able to talk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.browser.chromium import chromium
from tests.conftest import ServerFactory
from tests.support.media import silence, speechlike, write_wav, write_y4m

pytestmark = pytest.mark.browser

# A client written against the browser's own WebRTC API, as a kiosk page would be.
_CLIENT = """
async (codec) => {
  const report = { events: [] };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendrecv", streams: [stream] });
  const video = pc.addTransceiver(stream.getVideoTracks()[0], { direction: "sendonly" });
  const only = RTCRtpReceiver.getCapabilities("video").codecs.filter(
    (c) => c.mimeType.toLowerCase() === "video/" + codec.toLowerCase());
  if (!only.length) return { unsupported: codec };
  video.setCodecPreferences(only);
  const channel = pc.createDataChannel("events");
  channel.onmessage = (m) => report.events.push(JSON.parse(m.data).type);
  let energy = 0;
  pc.ontrack = (e) => {
    const player = new Audio();  // Chromium decodes remote audio for a sink that plays it
    player.srcObject = e.streams[0] || new MediaStream([e.track]);
    player.play();
  };
  const poll = setInterval(async () => {
    for (const stat of (await pc.getStats()).values()) {
      if (stat.type === "inbound-rtp" && stat.kind === "audio") energy = stat.totalAudioEnergy || 0;
    }
  }, 100);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  report.offer = pc.localDescription.sdp;
  const response = await fetch("/v1/calls", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  const body = await response.json();
  report.status = response.status;
  if (response.status !== 201) return { ...report, body };
  report.callId = body.call_id;
  report.answer = body.sdp;
  await pc.setRemoteDescription(body);
  const until = (check, ms, what) => new Promise((done, fail) => {
    const started = Date.now();
    const poll = setInterval(() => {
      if (check()) { clearInterval(poll); done(); }
      else if (Date.now() - started > ms) {
        clearInterval(poll);
        const seen = { events: report.events, energy, state: pc.connectionState };
        fail(new Error(what + " timed out: " + JSON.stringify(seen)));
      }
    }, 50);
  });
  await until(() => pc.connectionState === "connected", 10000, "connect");
  await until(() => report.events.includes("response.output_text.delta"), 15000, "echo text");
  // The echo of 1.5 s of speech at about -14 dBFS carries well over 0.02 (energy is
  // level squared times seconds); silence carries none.
  await until(() => energy > 0.02, 8000, "echo audio");
  report.energy = energy;
  clearInterval(poll);
  report.videoDirection = video.currentDirection;
  report.connection = pc.connectionState;
  pc.close();
  return report;
}
"""


async def test_a_browser_offering_only_av1_video_still_talks(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """(Chromium sends AV1 but not H265; the H265 offer is tested in test_offers.py.)"""
    codec = "AV1"
    server = await start_server()
    wav = tmp_path / "mic.wav"
    write_wav(wav, np.concatenate([silence(1.5), speechlike(1.5, seed=12), silence(8.0)]), 48_000)
    y4m = tmp_path / "camera.y4m"
    write_y4m(y4m, seconds=3.0)
    async with chromium(wav, y4m) as browser:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        report: dict[str, Any] = await page.evaluate(_CLIENT, codec)
    if "unsupported" in report:
        pytest.skip(f"this Chromium cannot send {codec}")
    assert report["status"] == 201, report.get("body")
    video_offer = next(line for line in report["offer"].splitlines() if line.startswith("m=video"))
    assert int(video_offer.split(" ")[1]) != 0
    video_answer = next(
        line for line in report["answer"].splitlines() if line.startswith("m=video")
    )
    assert video_answer.split(" ")[1] == "0", "the video section is rejected with port 0"
    assert report["videoDirection"] in ("inactive", "stopped", None)
    assert report["connection"] == "connected"
    assert report["energy"] > 0.02, "the echo came back"
    assert "session.created" in report["events"]

"""WHIP (RFC 9725) with a real aiortc client: an offer without candidates, candidates
trickled with PATCH, the call connects and runs; every misuse gets its status."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCSessionDescription

from tests.conftest import ServerFactory
from tests.support.caller import Caller, call_snapshot
from tests.support.media import rms, silence, speechlike

SDP = {"Content-Type": "application/sdp"}


def _split_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer without its candidates (as a trickling client sends it), and the candidates."""
    lines = sdp.split("\r\n")
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept), candidates


def _fragment(offer: str, candidates: list[str], end: bool = True) -> str:
    ufrag = next(line for line in offer.split("\r\n") if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in offer.split("\r\n") if line.startswith("a=ice-pwd:"))
    mid = next(line for line in offer.split("\r\n") if line.startswith("a=mid:"))
    lines = [ufrag, pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 0", mid, *candidates]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


async def _publish(
    http: aiohttp.ClientSession, url: str, caller: Caller, query: str = "?mode=loopback"
) -> tuple[aiohttp.ClientResponse, str, str, list[str]]:
    offer, candidates = _split_candidates(await caller.offer())
    async with http.post(f"{url}/v1/whip{query}", data=offer, headers=SDP) as r:
        answer = await r.text()
    return r, offer, answer, candidates


async def test_a_whip_client_trickles_its_candidates_and_talks(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    caller = Caller(server.url)
    try:
        r, offer, answer, candidates = await _publish(http, server.url, caller)
        assert r.status == 201, answer
        assert r.content_type == "application/sdp"
        location, etag = r.headers["Location"], r.headers["ETag"]
        assert location.startswith("/v1/whip/call_")
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
        assert r.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
        assert "a=candidate:" in answer
        call_id = location.rsplit("/", 1)[1]
        caller.call_id = call_id
        await caller.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        assert candidates, "the client gathered candidates to trickle"
        async with http.patch(
            f"{server.url}{location}",
            data=_fragment(offer, candidates),
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag},
        ) as p:
            assert p.status == 204, await p.text()
        async with asyncio.timeout(10):
            await caller.connected.wait()
            await caller.channel_open.wait()
        snap = await call_snapshot(http, server.url, call_id)
        assert snap["mode"] == "loopback"
        assert snap["counters"]["ice_candidates_trickled"] == len(candidates)
        caller.player.play(np.concatenate([speechlike(1.0, seed=2), silence(0.5)]))
        await asyncio.sleep(1.8)
        assert rms(caller.audio()) > 0.02, "the loopback call returned no audio"
        async with http.delete(f"{server.url}{location}") as d:
            assert d.status == 200
        assert (await call_snapshot(http, server.url, call_id))["end_reason"] == "deleted"
        async with http.patch(
            f"{server.url}{location}",
            data=_fragment(offer, candidates),
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag},
        ) as p:
            assert p.status == 404
    finally:
        await caller.close()


async def _error(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body: dict[str, Any] = await response.json()
    return response.status, body["error"]["code"]


async def test_whip_misuse_gets_clear_errors(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        webrtc__ice_servers=[
            {"urls": ["stun:stun.example.org:3478"]},
            {"urls": ["turn:turn.example.org"], "username": "u", "credential": 'p"w'},
        ]
    )
    url = f"{server.url}/v1/whip"
    caller = Caller(server.url)
    try:
        async with http.post(url, json={"sdp": "x"}) as r:
            assert await _error(r) == (415, "unsupported_media_type")
        async with http.post(url, data="not sdp at all", headers=SDP) as r:
            assert (await _error(r))[0] == 400
        async with http.post(url, data=b"\xff\xfe", headers=SDP) as r:
            assert await _error(r) == (400, "invalid_sdp")
        async with http.post(url + "?colour=red", data="v=0", headers=SDP) as r:
            assert await _error(r) == (400, "invalid_request")
        async with http.post(url + "?mode=karaoke", data="v=0", headers=SDP) as r:
            assert await _error(r) == (400, "invalid_request")

        r, offer, answer, candidates = await _publish(http, server.url, caller)
        assert r.status == 201, answer
        links = r.headers.getall("Link")
        assert '<stun:stun.example.org:3478>; rel="ice-server"' in links
        assert (
            '<turn:turn.example.org>; rel="ice-server"; username="u"; '
            'credential="p\\"w"; credential-type="password"'
        ) in links
        resource, etag = f"{server.url}{r.headers['Location']}", r.headers["ETag"]
        frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
        body = _fragment(offer, candidates)
        async with http.patch(resource, data=body, headers=frag) as p:
            assert await _error(p) == (428, "precondition_required")
        async with http.patch(resource, data=body, headers={**frag, "If-Match": '"nope"'}) as p:
            assert await _error(p) == (412, "precondition_failed")
        async with http.patch(resource, data=body, headers={**frag, "If-Match": "*"}) as p:
            assert await _error(p) == (422, "ice_restart_unsupported")
        restart = body.replace("a=ice-ufrag:", "a=ice-ufrag:new", 1)
        async with http.patch(resource, data=restart, headers={**frag, "If-Match": etag}) as p:
            assert await _error(p) == (422, "ice_restart_unsupported")
        async with http.patch(resource, data=body, headers={"If-Match": etag}) as p:
            assert await _error(p) == (415, "unsupported_media_type")
        bad = body.replace(candidates[0], "a=candidate:garbage")
        async with http.patch(resource, data=bad, headers={**frag, "If-Match": etag}) as p:
            assert await _error(p) == (400, "invalid_sdpfrag")
        async with http.patch(resource, data="hello", headers={**frag, "If-Match": etag}) as p:
            assert await _error(p) == (400, "invalid_sdpfrag")
        async with http.patch(
            f"{url}/call_0000", data=body, headers={**frag, "If-Match": etag}
        ) as p:
            assert await _error(p) == (404, "unknown_call")
        async with http.delete(f"{url}/call_0000") as d:
            assert await _error(d) == (404, "unknown_call")
        async with http.patch(resource, data=body, headers={**frag, "If-Match": etag}) as p:
            assert p.status == 204, "the call is unharmed by the bad requests"
    finally:
        await caller.close()

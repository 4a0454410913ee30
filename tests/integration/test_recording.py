"""Recording calls: opt-in with consent, both directions' audio and the event log, size and
age limits, no path escapes, deletion through the API."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile
from numpy.typing import NDArray

from realtime.recording import recording_path, sweep
from tests.conftest import RunningServer, ServerFactory
from tests.support.caller import Caller, make_offer
from tests.support.media import silence, speechlike

CONSENT = {"consent": True, "note": "both parties agreed on the call page"}


async def recorded_server(start_server: ServerFactory, root: Path, **more: Any) -> RunningServer:
    return await start_server(recording__enabled=True, recording__dir=str(root), **more)


def read_recording(path: Path) -> dict[str, Any]:
    caller, caller_rate = soundfile.read(path / "caller.flac", dtype="float32")
    service, service_rate = soundfile.read(path / "service.flac", dtype="float32")
    lines = (path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return {
        "caller": (caller, caller_rate),
        "service": (service, service_rate),
        "events": [json.loads(line) for line in lines],
        "meta": json.loads((path / "meta.json").read_text(encoding="utf-8")),
    }


def loud_seconds(audio: NDArray[np.float32], rate: int) -> float:
    frame = rate // 50
    frames = audio[: audio.size // frame * frame].reshape(-1, frame)
    return float(np.sum(np.sqrt(np.mean(frames**2, axis=1)) > 0.02)) / 50


async def test_a_consented_call_is_recorded_both_ways_with_its_events(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stale = tmp_path / "call_000000000000000000000000000000aa"
    stale.mkdir()
    old = time.time() - 8 * 24 * 3600
    os.utime(stale, (old, old))
    (tmp_path / "notes").mkdir()  # not a recording: never touched
    server = await recorded_server(start_server, tmp_path)
    caller = Caller(server.url, session={"record": CONSENT})
    try:
        await caller.call(http)
        await caller.wait_for("session.created", 5)
        await asyncio.sleep(0.5)
        caller.player.play(np.concatenate([speechlike(2.0, seed=5), silence(0.1)]))
        await caller.wait_for("response.output_text.delta", 8)
        await asyncio.sleep(4.5)  # the echo is said back
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
    finally:
        await caller.close()
    assert caller.call_id is not None
    folder = tmp_path / caller.call_id
    got = await asyncio.to_thread(read_recording, folder)
    (heard, heard_rate), (said, said_rate) = got["caller"], got["service"]
    assert (heard_rate, said_rate) == (16_000, 48_000)
    # What the caller said (2 s, mostly voiced) and what the service said back (its echo).
    assert 1.0 < loud_seconds(heard, heard_rate) < 2.5
    assert 0.5 < loud_seconds(said, said_rate) < 2.5  # the echo may not have ended yet
    # Both on the call's timeline: the echo starts after the speech has ended.
    first_heard = np.flatnonzero(np.abs(heard) > 0.05)[0] / heard_rate
    first_said = np.flatnonzero(np.abs(said) > 0.05)[0] / said_rate
    assert first_said > first_heard + 2.0
    events = got["events"]
    assert events[0]["type"] == "recording.started"
    assert events[0]["consent"]["given"] is True
    assert events[0]["consent"]["note"] == CONSENT["note"]
    kinds = [e["type"] for e in events]
    assert "session.created" in kinds and "response.output_text.delta" in kinds
    assert kinds[-1] == "session.closed"
    assert all(e["t"] >= 0 for e in events[1:])
    meta = got["meta"]
    assert meta["call_id"] == caller.call_id and meta["consent"]["given"] is True
    assert meta["ended"] == "call_ended"
    # A recording past max_age_s was deleted when this one started; other folders stay.
    assert not stale.exists() and (tmp_path / "notes").is_dir()
    # Deleted on request; then it is gone.
    url = f"{server.url}/v1/calls/{caller.call_id}/recording"
    async with http.delete(url) as r:
        assert r.status == 204
    assert not folder.exists()
    async with http.delete(url) as r:
        assert r.status == 404


async def test_recording_needs_the_config_and_the_callers_consent(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    off = await start_server(recording__dir=str(tmp_path))
    on = await recorded_server(start_server, tmp_path)
    offer = await make_offer()
    for server, record, status, code in [
        (off, CONSENT, 409, "recording_disabled"),
        (on, {"consent": False}, 400, "consent_required"),
        (on, {}, 400, "invalid_request"),
    ]:
        body = {"sdp": offer, "type": "offer", "session": {"record": record}}
        async with http.post(f"{server.url}/v1/calls", json=body) as r:
            assert r.status == status, await r.text()
            assert (await r.json())["error"]["code"] == code
    # A call that does not ask is not recorded, even where recording is on.
    caller = Caller(on.url)
    try:
        await caller.call(http)
        await caller.wait_for("session.created", 5)
        await asyncio.sleep(0.5)
    finally:
        await caller.close()
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_a_recording_stops_at_its_size_limit(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    limit = 64 * 1024
    server = await recorded_server(start_server, tmp_path, recording__max_bytes=limit)
    caller = Caller(server.url, session={"record": CONSENT})
    try:
        await caller.call(http)
        await caller.wait_for("session.created", 5)
        await asyncio.sleep(2.0)  # 2 s of both directions: about 256 KiB as 16-bit PCM
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
    finally:
        await caller.close()
    assert caller.call_id is not None
    folder = tmp_path / caller.call_id
    got = await asyncio.to_thread(read_recording, folder)
    pcm_bytes = 2 * (got["caller"][0].size + got["service"][0].size)
    assert limit - 4000 <= pcm_bytes + len((folder / "events.jsonl").read_bytes()) <= limit
    assert got["meta"]["ended"] == "max_bytes"
    assert {"type": "recording.stopped", "reason": "max_bytes"} in got["events"]


async def test_deleting_a_call_with_its_recording_and_no_path_escapes(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    outside = (
        tmp_path / "call_000000000000000000000000000000bb"
    )  # a sibling of the folder, with a call-like name
    outside.mkdir()
    server = await recorded_server(start_server, root)
    caller = Caller(server.url, session={"record": CONSENT})
    try:
        await caller.call(http)
        await caller.wait_for("session.created", 5)
        assert caller.call_id is not None
        assert (root / caller.call_id).is_dir()
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}/recording") as r:
            assert r.status == 409  # live: end it with ?recording=delete
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}?recording=delete") as r:
            assert r.status == 204
    finally:
        await caller.close()
    assert not (root / caller.call_id).exists()
    for name in [
        "..%2Fcall_000000000000000000000000000000bb",
        "%2E%2E",
        "call_000000000000000000000000000000bb%2F..",
        "x",
    ]:
        async with http.delete(f"{server.url}/v1/calls/{name}/recording") as r:
            assert r.status == 404, name
    assert outside.is_dir() and root.is_dir()


@pytest.mark.parametrize(
    "name",
    [
        "../call_000000000000000000000000000000aa",
        "call_000000000000000000000000000000aa/..",
        "..",
        "",
        "CALL_0",
        "a/b",
    ],
)
def test_a_recording_path_is_a_call_id_under_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a call id"):
        recording_path(tmp_path, name)
    assert (
        recording_path(tmp_path, "call_00000000000000000123456789abcdef")
        == tmp_path / "call_00000000000000000123456789abcdef"
    )


def test_sweep_deletes_only_old_recordings(tmp_path: Path) -> None:
    now = time.time()
    for name, age in [
        ("call_0000000000000000000000000000000a", 100),
        ("call_0000000000000000000000000000000b", 10),
        ("x", 100),
    ]:
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (now - age, now - age))
    assert sweep(tmp_path, 50, now) == ["call_0000000000000000000000000000000a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "call_0000000000000000000000000000000b",
        "x",
    ]
    assert sweep(tmp_path, 0, now) == []

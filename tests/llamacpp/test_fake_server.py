"""The fake llama.cpp-omni server refuses and answers what the real one does (so that the
adapter's tests mean something), and the speech-file reader copes with files in progress."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from omni.llamacpp.speech import SpeechBuffer, SpeechFolder, WavIncomplete, parse_wav
from omni.minicpmo.voice import write_wav
from tests.llamacpp.helpers import fake
from tests.support.fake_llamacpp import NOT_INITIALIZED, FakeLlamaCppServer, make_model_dir, tone

__all__ = ["fake"]


def _post(server: FakeLlamaCppServer, name: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/stream/{name}", json=body, timeout=2.0)


def _init(server: FakeLlamaCppServer, tmp_path: Path, voice: bool = True) -> Path:
    out = tmp_path / "out"
    body: dict[str, object] = {
        "media_type": 2, "duplex_mode": True, "model_dir": str(make_model_dir(tmp_path / "m")),
        "output_dir": str(out),
    }  # fmt: skip
    if voice:
        body["voice_audio"] = str(write_wav(tmp_path / "v.wav", np.zeros(16_000, np.float32)))
    assert _post(server, "omni_init", body).status_code == 200
    return out


def _error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["message"]


def test_every_stream_request_before_omni_init_is_refused(fake: FakeLlamaCppServer) -> None:
    for name, body in (("prefill", {"audio_path_prefix": "", "cnt": 1}), ("decode", {}),
                       ("break", {}), ("reset", {}), ("update_session_config", {})):  # fmt: skip
        assert _error(_post(fake, name, body)) == (400, NOT_INITIALIZED)


def test_wrong_fields_and_bodies_fail_as_upstream(fake: FakeLlamaCppServer, tmp_path: Path) -> None:
    code, message = _error(_post(fake, "omni_init", {"mediatype": 2}))
    assert code == 400 and "media_type" in message
    _init(fake, tmp_path)
    code, message = _error(_post(fake, "prefill", {"audio_path": "x.wav", "cnt": 1}))
    assert code == 400 and "audio_path_prefix" in message
    code, message = _error(_post(fake, "prefill", {"audio_path_prefix": "", "cnt": "1"}))
    assert code == 400 and "cnt" in message
    bad = {"audio_path_prefix": "", "cnt": 1, "max_slice_nums": "2"}
    assert _post(fake, "prefill", bad).status_code == 500
    raw = httpx.post(f"{fake.url}/v1/stream/prefill", content=b"{not json", timeout=2.0)
    assert raw.status_code == 500 and "parse_error" in raw.json()["error"]["message"]
    assert _error(httpx.get(f"{fake.url}/v1/nothing", timeout=2.0)) == (404, "File Not Found")


def test_missing_files(fake: FakeLlamaCppServer, tmp_path: Path) -> None:
    _init(fake, tmp_path)
    body = {"audio_path_prefix": str(tmp_path / "gone.wav"), "img_path_prefix": "", "cnt": 1}
    assert _post(fake, "prefill", body).status_code == 200, "missing audio is skipped silently"
    assert fake.deaf_units == 1
    body["img_path_prefix"] = str(tmp_path / "gone.jpg")
    assert _error(_post(fake, "prefill", body)) == (500, "stream_prefill failed")
    body = {"media_type": 2, "model_dir": str(tmp_path / "empty"), "output_dir": str(tmp_path)}
    assert _error(_post(fake, "omni_init", body)) == (500, "omni_init failed")


def test_decode_streams_events_then_done(fake: FakeLlamaCppServer, tmp_path: Path) -> None:
    out = _init(fake, tmp_path)
    assert (out / "tts_wav").is_dir(), "the voice started the worker threads"
    audio = write_wav(tmp_path / "u.wav", np.zeros(16_000, np.float32))
    assert _post(fake, "prefill", {"audio_path_prefix": str(audio), "cnt": 1}).status_code == 200
    answer = _post(fake, "decode", {"stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in answer.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    assert (
        lines[0] == 'data: {"content": "", "end_of_turn": true, "is_listen": true, "stop": false}'
    )


def test_decode_before_any_system_prompt_never_answers(
    fake: FakeLlamaCppServer, tmp_path: Path
) -> None:
    _init(fake, tmp_path, voice=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake.url}/v1/stream/decode", json={}, timeout=httpx.Timeout(0.5))


def test_reset_keeps_the_prompt_mark_so_units_after_it_have_no_system_prompt(
    fake: FakeLlamaCppServer, tmp_path: Path
) -> None:
    _init(fake, tmp_path)
    audio = str(write_wav(tmp_path / "u.wav", np.zeros(16_000, np.float32)))
    assert _post(fake, "reset", {}).status_code == 200
    _post(fake, "prefill", {"audio_path_prefix": audio, "cnt": 0})
    assert fake.units_without_prompt == 1, "cnt 0 does not rebuild the prompt after a reset"


# ---------------------------------------------------------------- speech files


def _wav_bytes(audio: np.ndarray, rate: int = 24_000) -> bytes:
    pcm = (audio * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + (struct.pack("<I", len(pcm)) + pcm)
    )


def test_a_wav_still_being_written_is_not_taken(tmp_path: Path) -> None:
    data = _wav_bytes(tone(2400))
    for cut in (0, 10, 44, len(data) - 1):
        with pytest.raises(WavIncomplete):
            parse_wav(data[:cut])
    assert np.allclose(parse_wav(data), tone(2400), atol=1e-4)
    assert parse_wav(_wav_bytes(tone(1600, 0), rate=16_000)).size == 2400, "resampled to 24 kHz"
    folder = SpeechFolder(tmp_path)
    (tmp_path / "wav_1.wav").write_bytes(data[:100])
    (tmp_path / "wav_0.wav").write_bytes(data)
    chunks, done = folder.take()
    assert [c.size for c in chunks] == [2400] and not done
    assert not (tmp_path / "wav_0.wav").exists()
    (tmp_path / "wav_1.wav").write_bytes(data)
    (tmp_path / "wav_10.wav").write_bytes(data)
    (tmp_path / "generation_done.flag").write_text("10\n")
    chunks, done = folder.take()
    assert len(chunks) == 2 and done
    assert folder.take() == ([], False)


def test_the_speech_buffer_is_bounded_and_keeps_order() -> None:
    buffer = SpeechBuffer(max_samples=5)
    buffer.push(np.arange(4, dtype=np.float32))
    buffer.push(np.arange(4, 8, dtype=np.float32))
    assert buffer.samples == 5 and buffer.dropped == 3
    first = buffer.pop(2)
    assert first is not None and first.tolist() == [3, 4]
    rest = buffer.pop(10)
    assert rest is not None and rest.tolist() == [5, 6, 7]
    assert buffer.pop(1) is None

"""The llamacpp engine against the fake llama.cpp-omni server (a real HTTP server and files)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from omni.api import (
    INPUT_RATE,
    OUTPUT_RATE,
    OUTPUT_UNIT_SAMPLES,
    EngineError,
    EngineUnavailable,
    Frame,
    SessionConfig,
)
from omni.llamacpp.engine import llamacpp_engine
from tests.llamacpp.helpers import config, fake, replica, session
from tests.minicpmo.helpers import run, talk_then_quiet, unit
from tests.support.fake_llamacpp import CHUNK_SAMPLES, TAIL_SAMPLES, FakeLlamaCppServer, tone
from tests.support.media import speechlike

__all__ = ["fake"]


def _frame(width: int = 320, height: int = 240) -> Frame:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200
    return Frame(rgb=rgb, offset_ms=500)


def _requests(server: FakeLlamaCppServer, name: str) -> list[dict[str, object]]:
    return [body for kind, body in server.requests if kind == name]


# ---------------------------------------------------------------- set-up


def test_warmup_initialises_the_server_for_duplex_speech(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    init = _requests(fake, "omni_init")[-1]
    assert init["media_type"] == 2
    assert init["duplex_mode"] is True
    assert init["use_tts"] is True
    assert init["model_dir"] == str(tmp_path / "gguf")
    assert init["tts_bin_dir"] == f"{tmp_path / 'gguf'}/tts"
    assert init["output_dir"] == str(rep.files.out_dir)
    assert fake.ctx is not None
    assert fake.ctx.voice_readable, "the default voice was copied where the server reads it"
    assert fake.resets == 1, "the warm-up session was closed"
    assert fake.deaf_units == 0
    rep.shutdown()


def test_a_session_starts_with_the_system_prompt_and_voice(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    sess = session(rep)
    update = _requests(fake, "update_session_config")[-1]
    assert update["duplex_mode"] is True
    assert update["media_type"] == 2
    assert fake.ctx is not None and fake.ctx.voice_readable
    run(sess, talk_then_quiet(1, 2))
    assert fake.units_without_prompt == 0
    sess.close()


def test_units_count_from_one_and_their_files_are_read_then_deleted(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake, vision=False)
    sess = session(rep)
    fake.requests.clear()
    run(sess, talk_then_quiet(2, 2))
    prefills = _requests(fake, "prefill")
    assert [p["cnt"] for p in prefills] == [1, 2, 3, 4]
    assert all(str(p["audio_path_prefix"]).startswith(str(rep.files.in_dir)) for p in prefills)
    assert all(p["img_path_prefix"] == "" for p in prefills)
    assert [u["samples"] for u in list(fake.units)[-4:]] == [16_000] * 4
    assert fake.deaf_units == 0
    assert not list(rep.files.in_dir.glob("unit-*")), "unit files are deleted once read"
    sess.close()


@pytest.mark.parametrize(("hd", "image_format"), [(False, "jpeg"), (True, "png")])
def test_frames_go_as_images_with_max_slice_nums(
    tmp_path: Path, fake: FakeLlamaCppServer, hd: bool, image_format: str
) -> None:
    rep = replica(tmp_path, fake, hd=hd, image_format=image_format)
    sess = session(rep)
    sess.step(unit(0, frames=(_frame(), _frame(448, 252))))
    prefill = _requests(fake, "prefill")[-1]
    assert str(prefill["img_path_prefix"]).endswith(".png" if hd else ".jpg")
    assert prefill["max_slice_nums"] == (2 if hd else 1)
    assert fake.units[-1]["image"] == (448, 252), "the unit's latest frame"
    sess.close()


def test_audio_only_sends_no_frames(tmp_path: Path, fake: FakeLlamaCppServer) -> None:
    rep = replica(tmp_path, fake, vision=False)
    assert _requests(fake, "omni_init")[-1]["media_type"] == 1
    sess = session(rep)
    sess.step(unit(0, frames=(_frame(),)))
    assert fake.units[-1]["image"] is None
    sess.close()


# ---------------------------------------------------------------- listen and speak


def test_listen_then_speak_a_turn_one_unit_of_speech_per_step(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    sess = session(rep)
    results = run(sess, talk_then_quiet(2, 7))
    assert all(r.listen and r.audio is None for r in results[:2]), "it listens while you talk"
    speaking = [r for r in results if not r.listen]
    assert [r.text for r in speaking] == ["word1 ", "word2 ", "word3 ", ""]
    assert [None if r.audio is None else r.audio.size for r in speaking] == [
        CHUNK_SAMPLES, CHUNK_SAMPLES, CHUNK_SAMPLES, TAIL_SAMPLES,
    ]  # fmt: skip
    assert [r.end_of_turn for r in speaking] == [False, False, False, True]
    assert all(r.listen and r.audio is None for r in results[results.index(speaking[-1]) + 1 :])
    speech = np.concatenate([r.audio for r in speaking if r.audio is not None])
    assert speech.dtype == np.float32
    assert np.allclose(speech, tone(speech.size, OUTPUT_RATE), atol=1e-3), "every sample, in order"
    for r in results:
        assert {"prefill", "decode"} <= set(r.timings)
        assert all(isinstance(v, float) for v in r.timings.values())
    sess.close()


def test_speech_later_than_its_unit_plays_in_the_next_units_in_order(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    fake.tts_delay_s = 0.3
    rep = replica(tmp_path, fake, speech_wait_ms=50)
    sess = session(rep)
    results = []
    for index, chunk in enumerate(talk_then_quiet(2, 9)):
        began = time.monotonic()
        results.append(sess.step(unit(index, chunk)))
        time.sleep(max(0.0, 0.2 - (time.monotonic() - began)))  # units 5 times faster than live
    speaking = [r for r in results if not r.listen]
    assert speaking[0].text == "word1 "
    assert speaking[0].audio is None, "its speech was not written yet"
    audio = [r.audio for r in speaking if r.audio is not None]
    assert all(a.size <= OUTPUT_UNIT_SAMPLES for a in audio)
    speech = np.concatenate(audio)
    assert speech.size == 3 * CHUNK_SAMPLES + TAIL_SAMPLES
    assert np.allclose(speech, tone(speech.size, OUTPUT_RATE), atol=1e-3)
    assert [r.end_of_turn for r in speaking].count(True) == 1
    sess.close()


def test_force_listen_count_breaks_off_a_model_that_talks_at_once(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    fake.speak_at_start = True
    fake.turn_units = 4
    rep = replica(tmp_path, fake, force_listen_count=3)
    sess = session(rep)
    breaks = fake.breaks
    results = run(sess, talk_then_quiet(0, 6))
    assert all(r.listen and r.audio is None and r.text == "" for r in results[:3])
    assert fake.breaks > breaks, "its speech was broken off"
    assert all(r.audio is None for r in results), "nothing of the forced-quiet turn plays"
    sess.close()


def test_without_force_listen_a_model_that_talks_at_once_is_heard(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    fake.speak_at_start = True
    rep = replica(tmp_path, fake, force_listen_count=0)
    sess = session(rep)
    results = run(sess, talk_then_quiet(0, 3))
    assert not results[0].listen
    assert results[0].audio is not None
    sess.close()


# ---------------------------------------------------------------- barge-in


def test_interrupt_mutes_the_rest_of_the_turn_and_the_next_unit_listens(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    fake.turn_units = 6
    fake.continue_after_break = True
    rep = replica(tmp_path, fake)
    sess = session(rep)
    results = run(sess, talk_then_quiet(2, 2))
    assert not results[-1].listen, "the model is talking"
    breaks = fake.breaks
    sess.interrupt()
    after = run(sess, talk_then_quiet(0, 7), start=len(results))
    assert fake.breaks > breaks
    assert after[0].listen and after[0].audio is None and after[0].text == ""
    assert all(r.listen and r.audio is None for r in after), "nothing of the turn plays"
    later = run(sess, talk_then_quiet(2, 4, seed=3), start=len(results) + len(after))
    assert any(not r.listen and r.audio is not None for r in later), "it speaks again later"
    sess.close()


def test_interrupt_from_another_thread_never_blocks_a_running_step(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    sess = session(rep)
    run(sess, talk_then_quiet(2, 2))
    fake.decode_s = 0.5
    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.update(result=sess.step(unit(9))))
    worker.start()
    time.sleep(0.2)
    began = time.perf_counter()
    sess.interrupt()
    assert time.perf_counter() - began < 0.05
    worker.join(5)
    assert not worker.is_alive()
    result = box["result"]
    assert getattr(result, "listen", False) is True, "the interrupted step says nothing"
    fake.decode_s = 0.0
    assert sess.step(unit(10)).listen
    sess.close()


# ---------------------------------------------------------------- cleanup and voice


def test_close_resets_the_server_and_deletes_the_calls_files(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    clip = speechlike(2.0, rate=INPUT_RATE, seed=8)
    sess = session(rep, SessionConfig(voice=clip))
    voice = str(_requests(fake, "update_session_config")[-1]["voice_audio"])
    assert voice.startswith(str(rep.files.in_dir))
    assert Path(voice).stat().st_size > 2 * INPUT_RATE * 2
    run(sess, talk_then_quiet(2, 3))
    resets, breaks = fake.resets, fake.breaks
    sess.close()
    assert (fake.resets, fake.breaks) == (resets + 1, breaks + 1)
    assert [p.name for p in rep.files.in_dir.iterdir()] == ["default-voice.wav"]
    assert [p for p in rep.files.out_dir.rglob("*") if p.is_file()] == []
    with pytest.raises(EngineError, match="closed"):
        sess.step(unit(0))
    sess.close()  # idempotent
    again = session(rep)
    assert (
        fake.ctx is not None and fake.ctx.voice == _requests(fake, "omni_init")[-1]["voice_audio"]
    )
    run(again, talk_then_quiet(1, 1))
    assert fake.units_without_prompt == 0, "the next call has its system prompt"
    again.close()


def test_without_a_voice_setting_the_servers_own_voice_is_used(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    replica(tmp_path, fake, voice="", server_voice="/srv/voices/ref.wav")
    assert _requests(fake, "omni_init")[-1]["voice_audio"] == "/srv/voices/ref.wav"
    assert _requests(fake, "update_session_config")[-1]["voice_audio"] == "/srv/voices/ref.wav"


# ---------------------------------------------------------------- failures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_that_is_not_running_is_named_at_warmup(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    engine = llamacpp_engine(config(tmp_path, url, connect_timeout_s=0.5))
    with pytest.raises(EngineUnavailable) as caught:
        engine.create_replica(0).warmup()
    message = str(caught.value)
    assert url in message
    assert "llama-server" in message
    assert "engine.llamacpp.servers" in message


def test_warmup_waits_for_a_server_loading_its_model(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    fake.loading = True
    threading.Timer(0.8, lambda: setattr(fake, "loading", False)).start()
    replica(tmp_path, fake).shutdown()
    fake.loading = True
    with pytest.raises(EngineUnavailable, match="Loading model"):
        replica(tmp_path, fake, startup_timeout_s=0.3)


def test_wrong_model_dir_or_none_is_reported_at_warmup(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    with pytest.raises(EngineUnavailable, match="omni_init failed"):
        replica(tmp_path, fake, model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(EngineUnavailable, match="model_dir is not set"):
        replica(tmp_path, fake, model_dir="")


def test_a_folder_the_server_does_not_share_is_reported_at_warmup(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    elsewhere = tmp_path / "server-side"
    with pytest.raises(EngineUnavailable, match="must name one folder"):
        replica(tmp_path, fake, server_shared_dir=str(elsewhere))


def test_a_server_error_mid_call_is_an_engine_error_and_the_call_goes_on(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake)
    sess = session(rep)
    fake.fail_next["/v1/stream/prefill"] = (500, "stream_prefill failed")
    with pytest.raises(EngineError, match="stream_prefill failed"):
        sess.step(unit(0))
    fake.fail_next["/v1/stream/decode"] = (400, "omni context not initialized")
    with pytest.raises(EngineError, match="400 omni context"):
        sess.step(unit(1))
    assert sess.step(unit(2)).listen
    sess.close()


def test_a_decode_slower_than_its_timeout_fails_the_step_not_the_call(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake, decode_timeout_s=0.3)
    sess = session(rep)
    fake.decode_s = 1.0
    began = time.perf_counter()
    with pytest.raises(EngineError, match="no answer in time"):
        sess.step(unit(0))
    assert time.perf_counter() - began < 0.9
    fake.decode_s = 0.0
    assert sess.step(unit(1)).listen, "the next unit goes through once the server is free"
    sess.close()


def test_a_server_that_goes_away_fails_steps_and_cleanup(
    tmp_path: Path, fake: FakeLlamaCppServer
) -> None:
    rep = replica(tmp_path, fake, connect_timeout_s=0.3)
    sess = session(rep)
    fake.stop()
    with pytest.raises(EngineError, match=fake.url):
        sess.step(unit(0))
    with pytest.raises(EngineError, match="could not be reset"):
        sess.close()


# ---------------------------------------------------------------- selection


def test_the_engine_is_built_by_name_and_never_picked_by_auto(tmp_path: Path) -> None:
    from omni import engines

    servers = ("http://127.0.0.1:1", "http://127.0.0.1:2")
    configs = engines.EngineSettings(
        name="llamacpp", replicas=5, llamacpp=config(tmp_path, servers[0], servers=servers)
    )
    built = engines.build_engine(configs, 10)
    assert built.info.name == "llamacpp"
    assert built.info.replicas == 2, "one replica per server; engine.replicas is ignored"
    assert built.create_replica(1).url == servers[1]  # type: ignore[attr-defined]
    assert engines.resolve("auto", configs) != "llamacpp"

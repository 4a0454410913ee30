"""The MiniCPM-o adapter against the contract fake of the upstream duplex API."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omni.api import INPUT_RATE, OUTPUT_RATE, Frame, Language, SessionConfig
from omni.minicpmo.config import MiniCPMOConfig
from omni.minicpmo.engine import MiniCPMOEngine
from omni.minicpmo.session import FIRST_UNIT_SAMPLES, full_cleanup
from tests.minicpmo.helpers import (
    FakeLoader,
    config,
    duplex_of,
    replica,
    run,
    session,
    talk_then_quiet,
    unit,
)
from tests.support.fake_minicpmo import RESULT_KEYS, FakeDuplex, FakeMiniCPMO
from tests.support.fake_minicpmo_unified import FakeUnifiedDuplex
from tests.support.media import speechlike


def test_the_first_unit_is_sent_as_1035_ms_and_later_ones_as_1000(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path)
    duplex = duplex_of(loader)
    sess = session(rep)
    duplex.prefill_calls.clear()
    run(sess, talk_then_quiet(2, 3))
    assert [c["samples"] for c in duplex.prefill_calls] == [FIRST_UNIT_SAMPLES] + [16_000] * 4
    assert duplex.dangling_units == 0
    assert len(duplex.generate_calls) >= 5
    sess.close()


def test_every_generate_gets_the_sampling_settings_and_the_prepared_voice(tmp_path: Path) -> None:
    rep, loader = replica(
        tmp_path, temperature=0.4, top_k=7, top_p=0.6, listen_prob_scale=1.5,
        max_new_speak_tokens_per_chunk=12, text_repetition_penalty=1.2,
    )  # fmt: skip
    duplex = duplex_of(loader)
    sess = session(rep)
    duplex.generate_calls.clear()
    run(sess, talk_then_quiet(2, 4))
    prepared = duplex.prepare_calls[-1]["prompt_wav_path"]
    assert prepared is not None
    assert Path(prepared).is_file()
    for call in duplex.generate_calls:
        assert call["temperature"] == 0.4
        assert call["top_k"] == 7
        assert call["top_p"] == 0.6
        assert call["listen_prob_scale"] == 1.5
        assert call["max_new_speak_tokens_per_chunk"] == 12
        assert call["text_repetition_penalty"] == 1.2
        assert call["decode_mode"] == "sampling"
        assert call["prompt_wav_path"] == prepared
    sess.close()


def test_the_model_listens_for_force_listen_count_units(tmp_path: Path) -> None:
    rep, _ = replica(tmp_path, force_listen_count=4)
    sess = session(rep)
    results = run(sess, talk_then_quiet(1, 6))
    assert all(r.listen for r in results[:4])
    assert any(not r.listen for r in results[4:])
    sess.close()


def test_a_turn_maps_to_speaking_units(tmp_path: Path) -> None:
    rep, _ = replica(tmp_path, force_listen_count=0)
    sess = session(rep)
    results = run(sess, talk_then_quiet(2, 6))
    speaking = [r for r in results if not r.listen]
    assert len(speaking) == 3, "the fake speaks a turn of three units"
    assert [r.end_of_turn for r in speaking] == [False, False, True]
    assert all(r.text.startswith("word") for r in speaking)
    assert all(r.audio is not None for r in speaking)
    assert [r.audio.size for r in speaking if r.audio is not None] == [
        OUTPUT_RATE,
        OUTPUT_RATE,
        13_000,
    ]
    assert all(r.audio is None for r in results if r.listen)
    for r in results:
        assert {"prefill", "llm", "all"} <= set(r.timings)
    assert speaking[0].timings["llm"] == pytest.approx(12.0)
    sess.close()


def test_results_of_the_fake_have_upstreams_keys(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path)
    duplex = duplex_of(loader)
    session(rep)
    duplex.streaming_prefill(audio_waveform=np.zeros(16_560, np.float32))
    result = duplex.streaming_generate()
    assert set(result) == RESULT_KEYS
    assert result["current_time"] == 1


def test_barge_in_mutes_the_rest_of_the_turn(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, force_listen_count=0)
    loader.loaded[0].model.turn_units = 6
    sess = session(rep)
    results = run(sess, talk_then_quiet(2, 1))
    assert not results[-1].listen, "the model is talking"
    sess.interrupt()
    assert not duplex_of(loader).is_break_set(), "the break event would leave a unit open"
    after = run(sess, talk_then_quiet(0, 8), start=len(results))
    assert after[0].listen
    assert after[0].audio is None
    assert after[0].text == ""
    muted = [r for r in after if not r.listen]
    assert muted == [], "nothing of the interrupted turn may play"
    assert duplex_of(loader).dangling_units == 0
    sess.close()


def test_a_barge_in_during_prefill_drops_the_unit_and_leaves_none_open(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, force_listen_count=0)
    loader.loaded[0].model.turn_units = 6
    duplex = duplex_of(loader)
    sess = session(rep)
    results = run(sess, talk_then_quiet(2, 1))
    assert not results[-1].listen, "the model is talking"
    prefill = duplex.streaming_prefill

    def barge_in_midway(**kwargs: Any) -> dict[str, Any]:
        answer = prefill(**kwargs)
        sess.interrupt()  # the caller talks while this unit is being prefilled
        return answer

    duplex.streaming_prefill = barge_in_midway  # type: ignore[method-assign]
    in_flight = sess.step(unit(3))
    duplex.streaming_prefill = prefill  # type: ignore[method-assign]
    assert in_flight.listen
    assert in_flight.audio is None, "the unit in flight is stale"
    after = run(sess, talk_then_quiet(0, 4), start=4)
    assert all(r.listen for r in after), "the rest of the turn is muted"
    assert duplex.dangling_units == 0, "every unit got its </unit>"
    sess.close()


def test_the_fake_counts_the_open_unit_a_break_leaves(tmp_path: Path) -> None:
    duplex = FakeMiniCPMO().as_duplex()
    duplex.prepare()
    assert duplex.streaming_prefill(audio_waveform=np.zeros(16_560, np.float32))["success"]
    duplex.set_break_event()  # set while prefill ran: generate returns before </unit>
    assert duplex.streaming_generate()["end_of_turn"]
    duplex.clear_break_event()
    duplex.streaming_prefill(audio_waveform=np.zeros(16_000, np.float32))
    assert duplex.dangling_units == 1


def test_barge_in_closes_the_turn_in_the_unified_variant(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, FakeLoader(unified=True), force_listen_count=0)
    loader.loaded[0].model.turn_units = 6
    duplex = duplex_of(loader)
    assert isinstance(duplex, FakeUnifiedDuplex)
    sess = session(rep)
    run(sess, talk_then_quiet(2, 1))
    sess.interrupt()
    duplex.generate_calls.clear()
    after = run(sess, talk_then_quiet(0, 2), start=3)
    assert duplex.generate_calls[0].get("force_listen_override") is True
    assert "force_listen_override" not in duplex.generate_calls[1]
    assert all(r.listen for r in after)
    later = run(sess, talk_then_quiet(2, 5, seed=3), start=5)
    assert any(not r.listen for r in later), "the model speaks again after the next turn"
    assert duplex.finalized >= 10, "finalize_unit after every generate"
    assert duplex.dangling_units == 0
    sess.close()


def test_the_unified_variant_gets_the_chat_template_and_needs_finalize(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, FakeLoader(unified=True), system_prompt_en="Be brief.")
    duplex = duplex_of(loader)
    session(rep).close()
    call = duplex.prepare_calls[-1]
    assert call["prefix_system_prompt"] == "<|im_start|>system\nBe brief.\n<|audio_start|>"
    assert call["suffix_system_prompt"] == "<|audio_end|><|im_end|>"
    duplex.prepare()
    duplex.streaming_prefill(audio_waveform=np.zeros(16_560, np.float32))
    duplex.streaming_generate()
    with pytest.raises(RuntimeError, match="finalize_unit"):
        duplex.streaming_prefill(audio_waveform=np.zeros(16_000, np.float32))


def test_a_turn_that_ends_inside_a_listening_unit_still_ends(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, force_listen_count=0)
    duplex = duplex_of(loader)
    sess = session(rep)
    script = iter([False, False, True, True])
    generate = duplex.streaming_generate

    def upstream_like(**kwargs: Any) -> dict[str, Any]:
        answer = generate(**kwargs)
        listen = next(script)  # <|turn_eos|> then <|listen|> in one unit: a plain listen
        return {**answer, "is_listen": listen, "end_of_turn": False, "text": "" if listen else "x"}

    duplex.streaming_generate = upstream_like  # type: ignore[method-assign]
    results = run(sess, talk_then_quiet(0, 4))
    assert [(r.listen, r.end_of_turn) for r in results] == [
        (False, False), (False, False), (True, True), (True, False),
    ]  # fmt: skip
    sess.close()


def test_a_unit_refused_by_prefill_is_never_generated(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path)
    duplex = duplex_of(loader)
    sess = session(rep)
    run(sess, talk_then_quiet(0, 2))
    duplex.set_break_event()  # a barge-in arriving while the unit is prefilled
    before = len(duplex.generate_calls)
    result = sess.step(unit(2))
    assert result.listen
    assert len(duplex.generate_calls) == before
    assert duplex.dangling_units == 0
    sess.close()


def test_cleanup_between_sessions_leaves_nothing_behind(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, force_listen_count=0)
    duplex = duplex_of(loader)
    first = session(rep)
    run(first, talk_then_quiet(3, 2))
    model = loader.loaded[0].model
    assert model.audio_past_key_values, "the first session left Whisper context"
    first.close()
    assert first.cleanup_steps == [
        "session stop", "duplex state", "decoder KV", "vocoder caches", "model session",
    ]  # fmt: skip
    second = session(rep)
    assert duplex.contaminated == []
    assert duplex.decoder.cache, "prepare fed the new system prompt"
    second.close()


def test_the_fake_notices_a_session_that_skipped_cleanup(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, force_listen_count=0)
    duplex = duplex_of(loader)
    first = session(rep)
    run(first, talk_then_quiet(3, 2))
    session(rep)  # upstream prepare() alone, no full cleanup
    assert "whisper cache" in duplex.contaminated


def test_instructions_language_and_a_callers_voice(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, system_prompt_zh="中文提示")
    duplex = duplex_of(loader)
    session(rep, SessionConfig(language=Language.ZH)).close()
    assert duplex.prepare_calls[-1]["prefix_system_prompt"] == "中文提示"
    session(rep, SessionConfig(instructions="Be a pirate.")).close()
    assert duplex.prepare_calls[-1]["prefix_system_prompt"] == "Be a pirate."
    clip = speechlike(2.0, rate=INPUT_RATE, seed=8)
    sess = session(rep, SessionConfig(voice=clip))
    call = duplex.prepare_calls[-1]
    assert np.array_equal(call["ref_audio"], clip)
    path = Path(call["prompt_wav_path"])
    assert path.is_file()
    assert path.stat().st_size > 2 * INPUT_RATE * 2
    run(sess, talk_then_quiet(1, 1))
    assert duplex.generate_calls[-1]["prompt_wav_path"] == str(path)
    sess.close()


def _frame(rgb: tuple[int, int, int], offset_ms: int) -> Frame:
    image = np.zeros((336, 448, 3), np.uint8)
    image[:] = rgb
    return Frame(image, offset_ms)


def test_frames_become_images_with_hd_and_high_refresh(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path, hd=True, high_refresh=True)
    duplex = duplex_of(loader)
    sess = session(rep)
    frames = (_frame((255, 0, 0), 0), _frame((0, 255, 0), 250), _frame((0, 0, 255), 750))
    sess.step(unit(0, frames=frames))
    call = duplex.prefill_calls[-1]
    assert call["max_slice_nums"] == 2
    main, grid = call["frames"]
    assert main.size == (448, 336)
    assert main.getpixel((10, 10)) == (0, 0, 255), "the latest frame comes first"
    assert max(grid.size) <= 448
    assert grid.getpixel((5, 5))[0] > 200, "the grid starts with the earliest frame"
    sess.close()
    rep_plain, loader_plain = replica(tmp_path)
    plain = session(rep_plain)
    plain.step(unit(0, frames=frames))
    call = duplex_of(loader_plain).prefill_calls[-1]
    assert len(call["frames"]) == 1
    assert call["max_slice_nums"] == 1


def test_hd_keeps_a_large_frame_large_enough_to_slice(tmp_path: Path) -> None:
    big = Frame(np.full((720, 1280, 3), 90, np.uint8), 0)
    for hd, size in ((True, (1280, 720)), (False, (448, 252))):
        rep, loader = replica(tmp_path, hd=hd)
        engine = MiniCPMOEngine(config(tmp_path, hd=hd))
        assert engine.frame_side == engine.info.frame_side == (1280 if hd else 448)
        sess = session(rep)
        sess.step(unit(0, frames=(big,)))
        assert duplex_of(loader).prefill_calls[-1]["frames"][0].size == size
        sess.close()


def test_interrupt_is_safe_from_another_thread(tmp_path: Path) -> None:
    rep, _ = replica(tmp_path, force_listen_count=0)
    sess = session(rep)
    chunks = talk_then_quiet(2, 6)
    stop = threading.Event()

    def barge() -> None:
        while not stop.is_set():
            sess.interrupt()

    thread = threading.Thread(target=barge)
    thread.start()
    try:
        results = run(sess, chunks)
    finally:
        stop.set()
        thread.join()
    assert len(results) == len(chunks)
    sess.close()


def test_replicas_are_placed_on_the_configured_devices(tmp_path: Path) -> None:
    loader = FakeLoader()
    engine = MiniCPMOEngine(
        config(tmp_path, devices=("cuda:0", "cuda:1"), replicas_per_device=2), loader=loader
    )
    assert engine.info.replicas == 4
    devices = [engine.create_replica(i).device for i in range(4)]
    assert devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


def test_warmup_runs_a_session_and_cleans_up(tmp_path: Path) -> None:
    rep, loader = replica(tmp_path)
    duplex = duplex_of(loader)
    assert len(duplex.prepare_calls) == 1
    assert len(duplex.prefill_calls) == 4
    assert loader.loaded[0].model.reset_calls >= 1
    rep.shutdown()


def test_full_cleanup_copes_with_builds_missing_parts() -> None:
    class Bare:
        pass

    model, duplex = FakeMiniCPMO(), Bare()
    from omni.minicpmo.loader import Loaded

    assert full_cleanup(Loaded(model=model, duplex=duplex, device="cpu")) == [
        "vocoder caches", "model session",
    ]  # fmt: skip


def test_a_missing_default_voice_is_a_clear_error(tmp_path: Path) -> None:
    from omni.api import EngineUnavailable

    engine = MiniCPMOEngine(MiniCPMOConfig(devices=("cpu",)), loader=FakeLoader())
    with pytest.raises(EngineUnavailable, match=r"engine\.minicpmo\.voice"):
        engine.create_replica(0).warmup()


def _fake_result(**kw: Any) -> dict[str, Any]:
    return kw


def test_fake_duplex_refuses_short_later_chunks() -> None:
    duplex = FakeMiniCPMO().as_duplex()
    assert isinstance(duplex, FakeDuplex)
    duplex.prepare()
    assert duplex.streaming_prefill(audio_waveform=np.zeros(16_000, np.float32))["success"]
    refused = duplex.streaming_prefill(audio_waveform=np.zeros(8_000, np.float32))
    assert not refused["success"]
    assert "audio not enough" in refused["reason"]
    assert duplex.streaming_prefill(audio_waveform=np.zeros(8_000, np.float32))["success"]

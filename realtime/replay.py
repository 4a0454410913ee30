"""Offline replay: a recorded audio or video file through an engine, unit by unit.

The file is cut into the same 1 s units a call makes (16 kHz mono audio, the latest frame of
each slot of the second, RGB, long side <= 448), each unit is stepped through the engine on
this thread, and the result is written as

* a JSON log of every unit (state, text, end of turn, timings, speech length) and a summary;
* the input's sound with the model's speech mixed in where a call would have played it (when
  the step that produced it finished, after any speech still playing), as ``.wav``, or with the
  input's video as ``.mp4``/``.mkv``, with the model's text as a subtitle track;
* the subtitles beside it as ``.srt``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soxr
from numpy.typing import NDArray

from omni.api import (
    INPUT_RATE,
    MAX_FRAME_SIDE,
    OUTPUT_RATE,
    UNIT_MS,
    UNIT_SAMPLES,
    Engine,
    Frame,
    SessionConfig,
    Unit,
)
from realtime.audio import video_to_rgb

AUDIO_OUT = (".wav",)
VIDEO_OUT = (".mp4", ".mkv")
_ORIGINAL_GAIN = 0.6
_MIN_CUE_MS = 1200


class ReplayError(ValueError):
    """The input or output cannot be used; the message says why."""


@dataclass(slots=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


@dataclass(slots=True)
class Replayed:
    units: int = 0
    speaking_units: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    speech: list[tuple[int, NDArray[np.float32]]] = field(default_factory=list)
    """(start sample at 24 kHz, speech) as a call would have played it."""
    cues: list[Cue] = field(default_factory=list)


def read_units(
    path: Path, frames_per_unit: int, frame_side: int = MAX_FRAME_SIDE
) -> Iterator[Unit]:
    """The file's units, as a call would cut them (the last one padded with silence)."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ReplayError(f"cannot open {path}: {exc}") from None
    with container:
        if not container.streams.audio:
            raise ReplayError(f"{path} has no audio track")
        streams: list[Any] = [container.streams.audio[0]]
        if container.streams.video and frames_per_unit:
            streams.append(container.streams.video[0])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=INPUT_RATE)
        audio = np.zeros(0, dtype=np.float32)
        slots: dict[tuple[int, int], Frame] = {}
        index = 0
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if isinstance(frame, av.AudioFrame):
                    frame.pts = None
                    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
                    if chunks:
                        audio = np.concatenate([audio, *chunks]).astype(np.float32)
                elif isinstance(frame, av.VideoFrame) and frame.time is not None:
                    unit, fraction = divmod(frame.time * 1000 / UNIT_MS, 1.0)
                    slot = min(frames_per_unit - 1, int(fraction * frames_per_unit))
                    if unit >= index:
                        slots[(int(unit), slot)] = Frame(
                            video_to_rgb(frame, frame_side), round(fraction * UNIT_MS)
                        )
            while audio.size >= UNIT_SAMPLES:
                yield _unit(index, audio[:UNIT_SAMPLES], slots)
                audio = audio[UNIT_SAMPLES:]
                index += 1
        if audio.size:
            padded = np.zeros(UNIT_SAMPLES, dtype=np.float32)
            padded[: audio.size] = audio
            yield _unit(index, padded, slots)


def _unit(index: int, audio: NDArray[np.float32], slots: dict[tuple[int, int], Frame]) -> Unit:
    frames = tuple(slots.pop(key) for key in sorted(k for k in slots if k[0] == index))
    for key in [k for k in slots if k[0] < index]:
        del slots[key]
    return Unit(index=index, start_ms=index * UNIT_MS, audio=audio.copy(), frames=frames)


def run(engine: Engine, units: Iterator[Unit], config: SessionConfig) -> Replayed:
    """Step every unit through one replica of ``engine``."""
    replica = engine.create_replica(0)
    replica.warmup()
    out = Replayed()
    cursor = 0
    try:
        session = replica.open_session(config)
        try:
            for unit in units:
                began = time.perf_counter()
                result = session.step(unit)
                step_ms = (time.perf_counter() - began) * 1000
                speech = result.audio if result.audio is not None and not result.listen else None
                entry: dict[str, Any] = {
                    "index": unit.index,
                    "start_ms": unit.start_ms,
                    "state": "listen" if result.listen else "speak",
                    "text": result.text,
                    "end_of_turn": result.end_of_turn,
                    "step_ms": round(step_ms, 1),
                    "timings": {k: round(v, 1) for k, v in result.timings.items()},
                    "frames": len(unit.frames),
                    "speech_ms": 0 if speech is None else round(speech.size * 1000 / OUTPUT_RATE),
                }
                out.units += 1
                if not result.listen:
                    out.speaking_units += 1
                ready = int(((unit.index + 1) * UNIT_MS + step_ms) * OUTPUT_RATE / 1000)
                start = max(cursor, ready)
                if speech is not None and speech.size:
                    out.speech.append((start, speech.astype(np.float32)))
                    cursor = start + speech.size
                    entry["speech_at_ms"] = round(start * 1000 / OUTPUT_RATE)
                if result.text:
                    start_ms = round(start * 1000 / OUTPUT_RATE)
                    length = 0 if speech is None else speech.size * 1000 // OUTPUT_RATE
                    out.cues.append(
                        Cue(start_ms, start_ms + max(length, _MIN_CUE_MS), result.text.strip())
                    )
                out.log.append(entry)
        finally:
            session.close()
    finally:
        replica.shutdown()
    return out


def mix(source: Path, replayed: Replayed) -> NDArray[np.float32]:
    """The input's sound (quieter) with the model's speech on top, 24 kHz mono."""
    original = np.concatenate([u.audio for u in read_units(source, 0)] or [np.zeros(0, np.float32)])
    base = soxr.resample(original, INPUT_RATE, OUTPUT_RATE).astype(np.float32) * _ORIGINAL_GAIN
    end = max([base.size, *(s + a.size for s, a in replayed.speech)])
    mixed = np.zeros(end, dtype=np.float32)
    mixed[: base.size] += base
    for start, speech in replayed.speech:
        mixed[start : start + speech.size] += speech
    peak = float(np.max(np.abs(mixed))) if mixed.size else 0.0
    if peak > 0.99:
        mixed *= np.float32(0.99 / peak)
    return mixed


def srt(cues: list[Cue]) -> str:
    def stamp(ms: int) -> str:
        return f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02},{ms % 1000:03}"

    blocks = []
    for number, cue in enumerate(_untangled(cues), start=1):
        blocks.append(f"{number}\n{stamp(cue.start_ms)} --> {stamp(cue.end_ms)}\n{cue.text}\n")
    return "\n".join(blocks)


def _untangled(cues: list[Cue]) -> list[Cue]:
    """Cues that end no later than the next one starts."""
    out = []
    for cue, following in zip(cues, [*cues[1:], None], strict=True):
        end = min(cue.end_ms, following.start_ms) if following else cue.end_ms
        out.append(Cue(cue.start_ms, max(end, cue.start_ms + 1), cue.text))
    return out


def write_outputs(
    source: Path, output: Path, replayed: Replayed, engine_name: str
) -> dict[str, Path]:
    suffix = output.suffix.lower()
    if suffix not in AUDIO_OUT + VIDEO_OUT:
        raise ReplayError(f"write .wav, .mp4 or .mkv, not {suffix or 'no extension'}")
    mixed = mix(source, replayed)
    written = {"log": output.with_suffix(".json"), "subtitles": output.with_suffix(".srt")}
    written["subtitles"].write_text(srt(replayed.cues), encoding="utf-8")
    summary = {
        "input": str(source),
        "engine": engine_name,
        "units": replayed.units,
        "speaking_units": replayed.speaking_units,
        "speech_ms": sum(a.size for _, a in replayed.speech) * 1000 // OUTPUT_RATE,
        "step_ms_p50": float(np.percentile([u["step_ms"] for u in replayed.log], 50))
        if replayed.log
        else 0.0,
        "step_ms_p95": float(np.percentile([u["step_ms"] for u in replayed.log], 95))
        if replayed.log
        else 0.0,
    }
    written["log"].write_text(
        json.dumps({"summary": summary, "units": replayed.log}, indent=1), encoding="utf-8"
    )
    if suffix in AUDIO_OUT:
        _write_wav(output, mixed)
    else:
        _write_video(source, output, mixed, replayed.cues)
    written["output"] = output
    return written


def _write_wav(path: Path, audio: NDArray[np.float32]) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=OUTPUT_RATE, layout="mono")
        _encode_audio(out, stream, audio)


def _encode_audio(out: Any, stream: Any, audio: NDArray[np.float32]) -> None:
    block = 1024
    for offset in range(0, audio.size, block):
        chunk = audio[offset : offset + block].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
        frame.sample_rate = OUTPUT_RATE
        frame.pts = offset
        frame.time_base = Fraction(1, OUTPUT_RATE)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
    b"BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


def _write_video(source: Path, output: Path, audio: NDArray[np.float32], cues: list[Cue]) -> None:
    with av.open(str(source)) as inp:
        if not inp.streams.video:
            raise ReplayError(f"{source} has no video: write a .wav instead")
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(25)
        with av.open(str(output), "w") as out:
            vout = out.add_stream("libx264", rate=rate)
            vout.width, vout.height = (
                vin.codec_context.width // 2 * 2,
                vin.codec_context.height // 2 * 2,
            )
            vout.pix_fmt = "yuv420p"
            aout = out.add_stream("aac", rate=OUTPUT_RATE, layout="mono")
            sout = out.add_stream("mov_text" if output.suffix.lower() == ".mp4" else "subrip")
            sout.codec_context.time_base = Fraction(1, 1000)
            sout.codec_context.subtitle_header = _ASS_HEADER
            for number, frame in enumerate(inp.decode(vin)):
                image = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
                image.pts = number
                image.time_base = Fraction(1) / rate
                for packet in vout.encode(image):
                    out.mux(packet)
            for packet in vout.encode(None):
                out.mux(packet)
            _encode_audio(out, aout, audio)
            for cue in _untangled(cues):
                text = cue.text.encode("utf-8")
                payload = (
                    len(text).to_bytes(2, "big") + text if output.suffix.lower() == ".mp4" else text
                )
                packet = av.Packet(payload)
                packet.stream = sout
                packet.pts = packet.dts = cue.start_ms
                packet.duration = cue.end_ms - cue.start_ms
                packet.time_base = Fraction(1, 1000)
                out.mux(packet)

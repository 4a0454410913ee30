"""The ``/v1/realtime`` wire (MiniCPM-o Realtime V1): the client's frames parsed and checked,
the server's events written.  Nothing here holds state: ``realtime.ws_call`` runs sessions.

A frame that cannot be used raises ``ClientError`` (its ``code`` goes back in an ``error``
event); one ``input.append`` carries at most ``MAX_APPEND_S`` of audio and
``MAX_FRAMES_PER_APPEND`` JPEGs, each checked for its size before anything decodes it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE
from realtime.audio import decode_voice
from realtime.errors import InvalidVoice

MODES = ("audio", "video")
MAX_APPEND_S = 2.0
"""Audio one ``input.append`` may carry (the protocol sends one second)."""
MAX_FRAMES_PER_APPEND = 4
MAX_FRAME_PIXELS = 4096 * 4096
"""Larger JPEGs are refused before they are decoded (a decompression bomb)."""
MAX_PROMPT_CHARS = 16_000


class ClientError(Exception):
    """A client frame that cannot be used: answered with an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def event(kind: str, **fields: Any) -> str:
    body: dict[str, Any] = {"type": kind}
    body.update(fields)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def error_event(code: str, message: str) -> str:
    return event("error", error={"code": code, "message": message})


@dataclass(frozen=True, slots=True)
class Init:
    instructions: str | None
    voice_bytes: bytes | None
    tts_enabled: bool


@dataclass(frozen=True, slots=True)
class Append:
    audio: NDArray[np.float32]
    force_listen: bool
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


ClientFrame = Init | Append | Close


def parse_frame(raw: str | bytes) -> ClientFrame:
    """One client frame; raises ClientError (code, message) for anything unusable."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ClientError("invalid_json", "message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("invalid_json", f"message is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ClientError("invalid_event", "a message must be a JSON object with a string 'type'")
    kind = body["type"]
    if kind == "input.append":
        return _parse_append(body.get("input"))
    if kind == "session.init":
        return _parse_init(body.get("payload", {}))
    if kind == "session.close":
        reason = body.get("reason")
        ok = isinstance(reason, str) and 0 < len(reason) <= 64 and reason.isprintable()
        return Close(reason if ok and isinstance(reason, str) else "client_close")
    raise ClientError("unknown_event", f"unknown event type {str(kind)[:64]!r}")


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError("invalid_event", f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("invalid_base64", f"{what} is not valid base64") from None


def _parse_append(body: object) -> Append:
    if not isinstance(body, dict):
        raise ClientError("invalid_event", "input.append needs an 'input' object")
    data = _b64(body.get("audio", ""), "input.audio")
    if len(data) % 4:
        raise ClientError("invalid_audio", "input.audio must be float32 samples (4 bytes each)")
    if len(data) > MAX_APPEND_S * INPUT_RATE * 4:
        raise ClientError(
            "audio_too_long", f"one input.append carries at most {MAX_APPEND_S:g} s of audio"
        )
    audio = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(audio).all():
        raise ClientError("invalid_audio", "input.audio holds NaN or infinite samples")
    np.clip(audio, -1.0, 1.0, out=audio)
    force = body.get("force_listen", False)
    if not isinstance(force, bool):
        raise ClientError("invalid_event", "input.force_listen must be a boolean")
    raw_frames = body.get("video_frames") or []
    if not isinstance(raw_frames, list):
        raise ClientError("invalid_event", "input.video_frames must be a list of base64 JPEGs")
    if len(raw_frames) > MAX_FRAMES_PER_APPEND:
        raise ClientError(
            "too_many_frames", f"one input.append carries at most {MAX_FRAMES_PER_APPEND} frames"
        )
    frames = tuple(_check_jpeg(_b64(f, "input.video_frames[]")) for f in raw_frames)
    return Append(audio, force, frames)


def _check_jpeg(data: bytes) -> bytes:
    """``data`` if it looks like a JPEG of a sane size (cheap: reads the headers only)."""
    size = jpeg_size(data)
    if size is None:
        raise ClientError("invalid_frame", "a video frame is not a JPEG image")
    if size[0] * size[1] > MAX_FRAME_PIXELS or 0 in size:
        raise ClientError("invalid_frame", f"a video frame of {size[0]}x{size[1]} is too large")
    return data


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header; None when it is not a JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _parse_init(payload: object) -> Init:
    if not isinstance(payload, dict):
        raise ClientError("invalid_init", "session.init needs a 'payload' object")
    prompt = payload.get("system_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise ClientError(
            "invalid_init", f"payload.system_prompt must be a string of <= {MAX_PROMPT_CHARS}"
        )
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        raise ClientError("invalid_init", "payload.config must be an object")
    tts = config.get("tts_enabled", True)
    if not isinstance(tts, bool):
        raise ClientError("invalid_init", "payload.config.tts_enabled must be a boolean")
    voice = payload.get("voice") or {}
    if not isinstance(voice, dict):
        raise ClientError("invalid_init", "payload.voice must be an object")
    clip = voice.get("tts_ref_audio_base64") or voice.get("ref_audio_base64")
    voice_bytes = _b64(clip, "payload.voice.ref_audio_base64") if clip else None
    return Init(instructions=prompt or None, voice_bytes=voice_bytes, tts_enabled=tts)


def decode_reference(data: bytes) -> NDArray[np.float32]:
    """A voice reference: an audio file PyAV reads, else raw float32 16 kHz mono samples
    (blocking: run it off the event loop)."""
    try:
        return decode_voice(data)
    except InvalidVoice as exc:
        if len(data) % 4 or len(data) < INPUT_RATE * 4:
            raise
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all() or np.abs(samples).max() > 1.0:
            raise exc from None
        return samples

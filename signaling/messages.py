"""HTTP request and response bodies of the signaling API (see docs/PROTOCOL.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SDP_CHARS = 64 * 1024
MAX_VOICE_BASE64 = 4 * 1024 * 1024


class RecordOptions(BaseModel):
    """Asks for the call to be recorded (the server must allow it: ``recording.enabled``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consent: bool
    """Everyone on the call agreed to the recording; it must be true."""
    note: str | None = Field(default=None, max_length=500)
    """How the consent was given (kept with the recording as it is)."""


class SessionOptions(BaseModel):
    """Per-call options a client may send with its offer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["engine", "loopback"] = "engine"
    """``loopback`` returns the caller's audio at once (no unit loop, no engine)."""
    instructions: str | None = Field(default=None, max_length=4000)
    language: Literal["en", "zh"] = "en"
    voice: str | None = Field(default=None, max_length=MAX_VOICE_BASE64)
    """A reference clip of the voice to speak in (base64 of any common audio file, 1-30 s),
    for engines that clone voices."""
    record: RecordOptions | None = None
    """Record this call (both directions' audio and its events), with consent."""


class CallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    session: SessionOptions = SessionOptions()


class CallAnswer(BaseModel):
    call_id: str
    sdp: str
    type: Literal["answer"] = "answer"

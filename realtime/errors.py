"""Errors of the call runtime, each with a stable machine-readable code."""

from __future__ import annotations


class CallError(Exception):
    """Base class; ``code`` is what clients see."""

    code = "call_error"


class InvalidOffer(CallError):
    """The offer is not an SDP offer we can answer."""

    code = "invalid_sdp"


class UnsupportedMedia(CallError):
    """The offer has no media we can use (no audio, or no codec in common)."""

    code = "unsupported_codec"


class ConnectFailed(CallError):
    code = "connect_failed"


class EngineBusy(CallError):
    """Every engine replica is in a call and the waiting queue is full."""

    code = "busy"


class EngineUnavailableError(CallError):
    """The engine could not open a session for the call."""

    code = "engine_unavailable"


class InvalidVoice(CallError):
    """The voice reference clip sent with the offer cannot be used."""

    code = "invalid_voice"

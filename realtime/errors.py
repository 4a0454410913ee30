"""The call runtime's error tree, and how any failure of a call is described to its client.

Every error raised on purpose has a stable machine-readable ``code``.  ``describe`` is the one
place that turns what ended a call (often an ExceptionGroup from the call's TaskGroup) into
the code and message its ``error`` event carries: it reads every exception in the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from omni.errors import EngineError


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


class InvalidVoice(CallError):
    """The voice reference clip sent with the offer cannot be used."""

    code = "invalid_voice"


class EngineFailing(CallError):
    """The engine failed on several units in a row; the call ends."""

    code = "engine_error"


class EngineHung(CallError):
    """A step ran past its deadline; the call ends and its replica is rebuilt."""

    code = "engine_timeout"


def leaves(exc: BaseException) -> list[BaseException]:
    """Every exception inside ``exc``, with (nested) exception groups opened up, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a client is told about a failure."""

    code: str
    message: str
    expected: bool
    """An error raised on purpose (bad input, a failing engine), not a bug to log loudly."""


def describe(exc: BaseException) -> Failure:
    """The most telling failure in ``exc``: the first error of our own trees (the call's,
    then the engines'), else an internal error, whose details stay in the log."""
    found = leaves(exc)
    for kind in (CallError, EngineError):
        for leaf in found:
            if isinstance(leaf, kind):
                return Failure(getattr(leaf, "code", "error"), str(leaf), True)
    return Failure("internal_error", "internal error", False)

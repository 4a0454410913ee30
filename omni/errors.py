"""The engines' error tree: every error an engine, a replica or the pool raises on purpose.

Each class has a stable ``code`` that clients see; the control plane maps them to HTTP
statuses and call events in one place (``signaling.errors.to_api_error``,
``realtime.errors.describe``).
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """An engine failed in a way the call should report (the call may go on)."""

    code = "engine_error"


class EngineUnavailable(EngineError):
    """An engine cannot run here (missing weights, device or dependency), or could not open
    a session for a call."""

    code = "engine_unavailable"


class EngineBusy(EngineError):
    """Every replica is in a call and the waiting queue is full (or no replica works)."""

    code = "busy"

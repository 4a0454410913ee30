"""Recording calls (opt-in per call, and in config): admission checks and the API's side.

A call is recorded only when ``recording.enabled`` is set and the call's request asks for it
with the caller's consent (``"session": {"record": {"consent": true, "note": "..."}}``); the
consent goes into the recording (realtime.recording).  ``DELETE /v1/calls/{id}/recording``
deletes a recording; ``DELETE /v1/calls/{id}?recording=delete`` ends the call and deletes its
recording with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiohttp import web

from realtime.recording import CallRecorder, Consent, RecordingConfig, delete_recording
from realtime.session import Call, CallMode
from signaling.errors import ApiError
from signaling.messages import SessionOptions

log = logging.getLogger(__name__)


class Recordings:
    def __init__(self, config: RecordingConfig) -> None:
        self.config = config
        self.root = Path(config.dir)

    def check(self, session: SessionOptions) -> None:
        """Refuse a call whose recording cannot be done as asked (before it is admitted)."""
        if session.record is None:
            return
        if not self.config.enabled:
            raise ApiError(
                409, "recording_disabled", "this server does not record calls (recording.enabled)"
            )
        if session.record.consent is not True:
            raise ApiError(
                400, "consent_required", "session.record needs consent: true to record the call"
            )
        if session.mode != CallMode.ENGINE.value:
            raise ApiError(400, "invalid_request", "only engine calls can be recorded")

    def attach(self, call: Call, session: SessionOptions) -> None:
        """Start recording ``call`` if its request asked to (after ``check``)."""
        if session.record is None or not self.config.enabled:
            return
        consent = Consent(given_at=time.time(), note=session.record.note)
        call.recorder = CallRecorder(self.config, call.call_id, consent)
        call.events.listener = call.recorder.event
        log.info("call recorded", extra={"call_id": call.call_id, "path": str(call.recorder.path)})

    async def delete(self, call_id: str) -> bool:
        try:
            return await asyncio.to_thread(delete_recording, self.root, call_id)
        except ValueError:
            return False


async def delete_call_recording(request: web.Request) -> web.Response:
    """DELETE /v1/calls/{call_id}/recording: 204, or 404 when there is none (or the call is
    still live: end it with ``?recording=delete`` instead)."""
    from signaling.app_keys import CALLS
    from signaling.auth import principal_of

    calls = request.app[CALLS]
    call_id = request.match_info["call_id"]
    principal = principal_of(request)
    try:
        live = calls.snapshot(call_id, principal)["state"] != "ended"
    except ApiError:
        if not principal.anonymous:
            raise  # with auth on, only the owner of a call this process knows may delete
        live = False  # a call this process no longer remembers
    if live:
        raise ApiError(
            409, "call_live", "the call is still going: DELETE /v1/calls/{id}?recording=delete"
        )
    if not await calls.recordings.delete(call_id):
        raise ApiError(404, "unknown_recording", f"no recording of call {call_id[:40]!r}")
    return web.Response(status=204)

"""A call's state, counters and recent timings, as GET /v1/calls/{id} shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omni.api import INPUT_RATE
from realtime.audio import WIRE_RATE
from realtime.stats import percentiles

if TYPE_CHECKING:
    from realtime.session import Call


def snapshot(call: Call) -> dict[str, Any]:
    now = call.clock.now()
    return {
        "call_id": call.call_id,
        "state": call.state.value,
        "mode": call.mode.value,
        "engine": call.engine_label,
        "peer": call.peer.state.value,
        "age_s": round(now - call.created_at, 3),
        "end_reason": call.end_reason,
        "counters": {
            "audio_in_ms": round(call.audio_in_ms),
            "units": call.loop.units,
            "steps": call.loop.steps,
            "early_steps": call.loop.early_steps,
            "dropped_units": call.loop.dropped_units,
            "engine_errors": call.loop.errors,
            "late_audio_samples": call.slicer.late_samples,
            "audio_lost_ms": call.inbound.gap_samples * 1000 // INPUT_RATE,
            "audio_repaired_ms": call.inbound.repaired_samples * 1000 // INPUT_RATE,
            "audio_dtx_ms": call.inbound.dtx_samples * 1000 // INPUT_RATE,
            "audio_missing_ms": call.slicer.missing_samples * 1000 // INPUT_RATE,
            "speech_segments": call.speech_segments,
            "interrupts": call.interrupts,
            "frames_out": call.pacer.frames,
            "frames_out_skipped": call.pacer.skipped_frames,
            "speech_out_ms": call.playout.played * 1000 // WIRE_RATE,
            "speech_dropped_ms": call.playout.dropped * 1000 // WIRE_RATE,
            "speech_cleared_ms": call.playout.cleared * 1000 // WIRE_RATE,
            "playout_ms": round(call.playout.level_ms),
            "playout_underruns": call.playout.underruns,
            "video_frames_in": call.video.received,
            "events_sent": call.events.sent,
            "events_dropped": call.events.dropped,
            "loopback_frames_dropped": call.relay.dropped,
            "ice_candidates_trickled": call.peer.trickled,
        },
        "timings_ms": {
            "step": percentiles(call.loop.step_ms),
            "wait": percentiles(call.loop.wait_ms),
            "late": percentiles(call.loop.late_ms),
            "out_frame_lateness": percentiles(call.pacer.lateness_ms),
        },
    }

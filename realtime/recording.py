"""Recording a call (opt-in): both directions' audio and the event log, with the consent.

A recording is a folder ``<dir>/<call_id>/`` named after the server's own call id (never
after anything a client sent), holding:

* ``caller.<flac|wav>``: what the service heard, 16 kHz mono, gaps (lost or DTX audio) as
  silence, so its timeline is the call's;
* ``service.<flac|wav>``: what the service sent, 48 kHz mono, as paced onto the wire
  (silence included);
* ``events.jsonl``: a ``recording.started`` line with the consent, then every event the
  call sent its client, one JSON object a line, each with ``t`` (seconds into the call);
* ``meta.json``: the call id, the consent, the formats, and at the end why it stopped.

The call's loop only hands chunks to a bounded queue; one worker thread per recording encodes
and writes them (soundfile), so nothing blocks the loop.  When the queue is full a chunk is
dropped and counted.  ``max_bytes`` caps a recording (counted as 16-bit PCM, an upper bound
for FLAC): past it the audio stops and the log says so.  Recordings older than ``max_age_s``
are deleted whenever a new one starts (``sweep``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from omni.api import INPUT_RATE, require

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"^call_[0-9a-f]{32}$")
"""The only folder names a recording may have (the server's call ids)."""
_QUEUE_ITEMS = 1000
"""About 10 s of both directions' 20 ms chunks."""
_OUT_RATE = 48_000


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    enabled: bool = False
    """Whether calls may be recorded at all (each call must still ask, with consent)."""
    dir: str = "recordings"
    """Folder of the recordings (created when needed)."""
    format: Literal["flac", "wav"] = "flac"
    max_bytes: int = 200 * 1024 * 1024
    """Largest recording (audio counted as 16-bit PCM, plus the event log)."""
    max_age_s: float = 7 * 24 * 3600.0
    """Recordings older than this are deleted (0 = kept until deleted through the API)."""

    def __post_init__(self) -> None:
        require(bool(self.dir.strip()), "dir must not be empty")
        require(64 * 1024 <= self.max_bytes <= 1 << 40, "max_bytes must be 64 KiB..1 TiB")
        require(self.max_age_s >= 0, "max_age_s must be >= 0")


@dataclass(frozen=True, slots=True)
class Consent:
    """What the client said when it asked for the recording."""

    given_at: float
    """Unix time the call was requested."""
    note: str | None = None
    """The client's own words about the consent (who agreed, how), kept as given."""
    remote: str | None = None
    """The requesting address, as the server saw it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "given": True,
            "given_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.given_at)),
            "note": self.note,
            "remote": self.remote,
        }


def recording_path(root: Path, call_id: str) -> Path:
    """The folder of ``call_id``'s recording; ValueError for anything but a call id."""
    if not CALL_ID.match(call_id):
        raise ValueError(f"not a call id: {call_id[:40]!r}")
    path = (root / call_id).resolve()
    if path.parent != root.resolve():
        raise ValueError(f"not a call id: {call_id[:40]!r}")
    return path


def delete_recording(root: Path, call_id: str) -> bool:
    """Delete ``call_id``'s recording (blocking: run it on a thread); False if none."""
    path = recording_path(root, call_id)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


def sweep(root: Path, max_age_s: float, now: float | None = None) -> list[str]:
    """Delete recordings older than ``max_age_s`` (blocking); returns their call ids."""
    if max_age_s <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_s
    gone = []
    for path in root.iterdir():
        if path.is_dir() and CALL_ID.match(path.name) and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path.name)
    return gone


class CallRecorder:
    """One call's recording: ``heard``/``said``/``event`` from the loop, writing on a thread."""

    def __init__(self, config: RecordingConfig, call_id: str, consent: Consent) -> None:
        self.config = config
        self.call_id = call_id
        self.root = Path(config.dir)
        self.path = recording_path(self.root, call_id)
        self.consent = consent
        self.dropped_chunks = 0
        self.bytes = 0
        """Bytes recorded so far (audio as 16-bit PCM, plus the event log)."""
        self.stopped_by: str | None = None
        self._began = time.monotonic()
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=_QUEUE_ITEMS)
        self._thread = threading.Thread(
            target=self._write_all, name=f"record-{call_id}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ the loop's side

    def heard(self, samples: NDArray[np.float32], gap: int = 0) -> None:
        """The caller's audio as the service got it (16 kHz), after ``gap`` missing samples."""
        if gap:
            self._put("caller", np.zeros(min(gap, INPUT_RATE * 10), dtype=np.float32))
        if samples.size:
            self._put("caller", samples)

    def said(self, samples: NDArray[np.int16]) -> None:
        """A frame the service sent (48 kHz, 16-bit)."""
        self._put("service", samples)

    def event(self, text: str) -> None:
        """An event the call sent its client (its JSON text)."""
        self._put("event", (round(time.monotonic() - self._began, 3), text))

    def _put(self, kind: str, payload: Any) -> None:
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:
            self.dropped_chunks += 1

    async def close(self) -> None:
        """Finish writing and close the files (waits for the writer thread, off the loop)."""
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(self._thread.join)

    # ------------------------------------------------------------ the writer thread

    def _write_all(self) -> None:
        try:
            gone = sweep(self.root, self.config.max_age_s)
            if gone:
                log.info("recordings past their age deleted: %s", ", ".join(gone))
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_meta(None)
            with Writers(self.path, self.config.format) as writers:
                started = {"type": "recording.started", "consent": self.consent.as_dict()}
                writers.log(_line(started))
                self._drain(writers)
        except Exception:
            log.exception("recording of call %s failed", self.call_id)
            self.stopped_by = self.stopped_by or "error"
            self._discard_rest()
        self._write_meta(self.stopped_by or "call_ended")

    def _drain(self, writers: Writers) -> None:
        while (item := self._queue.get()) is not None:
            kind, payload = item
            if self.stopped_by is not None:
                continue
            if kind == "event":
                t, text = payload
                line = _line({"t": t, **json.loads(text)})
                size = len(line.encode())
            else:
                size = int(payload.size) * 2
            if self.bytes + size > self.config.max_bytes:
                self.stopped_by = "max_bytes"
                writers.log(_line({"type": "recording.stopped", "reason": "max_bytes"}))
                continue
            if kind == "event":
                writers.log(line)
            else:
                writers.audio(kind, payload)
            self.bytes += size

    def _discard_rest(self) -> None:
        while self._queue.get() is not None:
            pass

    def _write_meta(self, ended: str | None) -> None:
        if not self.path.is_dir():
            return
        meta = {
            "call_id": self.call_id,
            "consent": self.consent.as_dict(),
            "format": self.config.format,
            "caller_rate": INPUT_RATE,
            "service_rate": _OUT_RATE,
            "ended": ended,
            "bytes": self.bytes,
            "dropped_chunks": self.dropped_chunks,
        }
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


class Writers:
    """The open files of one recording (used by its writer thread only)."""

    def __init__(self, path: Path, fmt: str) -> None:
        import soundfile  # the `recording` extra

        subtype = "PCM_16"
        self._files = {
            "caller": soundfile.SoundFile(
                path / f"caller.{fmt}", "w", INPUT_RATE, 1, subtype, format=fmt.upper()
            ),
            "service": soundfile.SoundFile(
                path / f"service.{fmt}", "w", _OUT_RATE, 1, subtype, format=fmt.upper()
            ),
        }
        self._events = (path / "events.jsonl").open("a", encoding="utf-8")

    def audio(self, kind: str, samples: NDArray[Any]) -> None:
        if samples.dtype != np.int16:
            samples = np.clip(samples, -1.0, 1.0)
        self._files[kind].write(samples)

    def log(self, line: str) -> None:
        self._events.write(line)
        self._events.flush()

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()
        self._events.close()

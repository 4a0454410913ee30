"""The server's speech: numbered WAV files in its output folder, read once and deleted.

llama.cpp-omni's vocoder thread writes 24 kHz mono 16-bit WAV files ``wav_<n>.wav`` into
``<output_dir>/tts_wav/`` (about one second each, a window of 25 speech tokens), some time after
the decode that produced their text, and ``generation_done.flag`` when a turn's last speech is
written.  The numbering restarts at 0 after a break when the vocoder thread notices it, and
goes on otherwise, so files are taken in number order and deleted once read: whatever is in the
folder is new.  A file is taken only once it holds all the bytes its header announces (the
server writes it in place, not atomically).
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections import deque
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from omni.api import OUTPUT_RATE

log = logging.getLogger(__name__)

WAV_NAME = re.compile(r"^wav_(\d+)\.wav$")
DONE_FLAG = "generation_done.flag"
MAX_FILES_PER_TAKE = 64
MAX_WAV_BYTES = 16 * 1024 * 1024
STALE_PARTIAL_S = 5.0
"""A file still incomplete this long after it was last written is dropped (a crashed writer)."""


class WavIncomplete(Exception):
    """The file is still being written."""


def parse_wav(data: bytes) -> NDArray[np.float32]:
    """Mono float32 samples at OUTPUT_RATE from a PCM16/PCM32-float WAV; raises WavIncomplete
    when the data chunk is shorter than its header says, ValueError when it is not a WAV."""
    if len(data) < 12:
        raise WavIncomplete
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"fmt ":
            if len(body) < 16:
                raise WavIncomplete
            code, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            fmt = (code, channels, rate, bits)
        elif kind == b"data":
            if len(body) < size:
                raise WavIncomplete
            if fmt is None:
                raise ValueError("data before fmt")
            return _samples(body, *fmt)
        pos += 8 + size + (size & 1)
    raise WavIncomplete


def _samples(body: bytes, code: int, channels: int, rate: int, bits: int) -> NDArray[np.float32]:
    if channels < 1 or rate < 1000:
        raise ValueError(f"unusable WAV format ({channels} channels, {rate} Hz)")
    if code == 1 and bits == 16:
        pcm = np.frombuffer(body[: len(body) - len(body) % 2], dtype="<i2")
        audio = pcm.astype(np.float32) / 32768.0
    elif code == 3 and bits == 32:
        audio = np.frombuffer(body[: len(body) - len(body) % 4], dtype="<f4").astype(np.float32)
    else:
        raise ValueError(f"unsupported WAV encoding (format {code}, {bits} bits)")
    audio = audio[: audio.size - audio.size % channels].reshape(-1, channels).mean(axis=1)
    if rate != OUTPUT_RATE:
        audio = soxr.resample(audio, rate, OUTPUT_RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


class SpeechFolder:
    """The server's ``tts_wav`` folder, as seen from here."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def take(self) -> tuple[list[NDArray[np.float32]], bool]:
        """The complete speech files written since the last take, in order (each deleted once
        read), and whether a turn's end was flagged."""
        chunks: list[NDArray[np.float32]] = []
        for _, path in self._numbered()[:MAX_FILES_PER_TAKE]:
            try:
                stat = path.stat()
                if stat.st_size > MAX_WAV_BYTES:
                    raise ValueError(f"{stat.st_size} bytes")
                chunks.append(parse_wav(path.read_bytes()))
            except FileNotFoundError:
                continue
            except WavIncomplete:
                if time.time() - stat.st_mtime < STALE_PARTIAL_S:
                    break  # later files cannot be complete before this one
                log.warning("dropping %s: incomplete for %.0f s", path.name, STALE_PARTIAL_S)
            except (OSError, ValueError) as exc:
                log.warning("dropping unreadable speech file %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
        flag = self.folder / DONE_FLAG
        done = flag.exists()
        if done:
            flag.unlink(missing_ok=True)
        return chunks, done

    def sweep(self) -> int:
        """Delete every speech file and the end flag (stale speech); returns how many."""
        paths = [path for _, path in self._numbered()]
        paths.append(self.folder / DONE_FLAG)
        removed = 0
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete %s: %s", path, exc)
        return removed

    def _numbered(self) -> list[tuple[int, Path]]:
        try:
            names = [entry.name for entry in self.folder.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            match = WAV_NAME.match(name)
            if match:
                found.append((int(match.group(1)), self.folder / name))
        found.sort()
        return found


class SpeechBuffer:
    """Speech received and not yet handed out, bounded in samples (the oldest is dropped)."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._chunks: deque[NDArray[np.float32]] = deque()
        self.samples = 0
        self.dropped = 0

    def push(self, chunk: NDArray[np.float32]) -> None:
        if chunk.size == 0:
            return
        self._chunks.append(chunk)
        self.samples += chunk.size
        while self.samples > self.max_samples:
            excess = self.samples - self.max_samples
            head = self._chunks[0]
            if head.size <= excess:
                self._chunks.popleft()
                self.samples -= head.size
                self.dropped += head.size
            else:
                self._chunks[0] = head[excess:]
                self.samples -= excess
                self.dropped += excess

    def pop(self, count: int) -> NDArray[np.float32] | None:
        """Up to ``count`` samples from the front; None when empty."""
        if not self.samples:
            return None
        parts: list[NDArray[np.float32]] = []
        need = count
        while need and self._chunks:
            head = self._chunks[0]
            if head.size <= need:
                parts.append(self._chunks.popleft())
                need -= head.size
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        out = np.concatenate(parts).astype(np.float32, copy=False)
        self.samples -= out.size
        return out

    def clear(self) -> int:
        cleared = self.samples
        self._chunks.clear()
        self.samples = 0
        return cleared

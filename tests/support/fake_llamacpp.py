"""A fake llama.cpp-omni server (its ``llama-server`` ``/v1/stream/*`` API), written from the
facts we read in the upstream server source (our own words, no upstream code).  It is a real
HTTP server on 127.0.0.1 (aiohttp, on its own thread and loop) that reads and writes real
files, so the adapter is driven exactly as the real server drives it.

What it reproduces, because the adapter must cope with each:

* Errors are ``{"error": {"code", "message", "type"}}`` with that HTTP status.  A body that is
  not JSON fails with 500 (the server's JSON parser throws); any ``/v1/stream/*`` request before
  ``omni_init`` fails with 400 "omni context not initialized. call /v1/stream/omni_init first".
* ``omni_init`` wants an integer ``media_type`` (or ``msg_type``); it fails with 500
  "omni_init failed" when ``model_dir`` lacks the model files.  With ``voice_audio`` it
  prefills the system prompt (unit 0) and starts the model's worker threads, which create
  ``<output_dir>/{tts_txt,llm_debug,tts_wav}``.
* ``prefill`` wants a string ``audio_path_prefix`` and an integer ``cnt``; ``max_slice_nums``
  must be an integer when given (500 otherwise).  ``cnt`` 0 before the system prompt makes that
  audio the reference voice.  A missing or unreadable audio file is skipped silently (the unit
  is fed without audio: ``deaf_units``); a missing or unreadable image fails with 500
  "stream_prefill failed".  The files are read before the answer.
* ``decode`` streams ``data: {"content","end_of_turn","is_listen","stop"}`` events, then
  ``data: [DONE]``: text fragments while speaking, a final ``stop`` event when the decode ends
  speaking, or one ``is_listen`` event.  Before any system prompt (no worker threads) it never
  answers.  It holds the context lock while it runs, so ``break``/``reset``/``prefill`` wait for
  it.
* Speech comes ``tts_delay_s`` after the decode, from a vocoder task: ``wav_<n>.wav``
  (24 kHz mono 16-bit, one second of a 330 Hz tone per speaking unit, written in two parts,
  not atomically) in ``<output_dir>/tts_wav``; at a turn's end a short tail file and
  ``generation_done.flag``.  Numbers go on across turns and restart at 0 after a break.
* ``break`` drops queued speech and ends the turn (unless ``continue_after_break``: the model
  goes on talking, as the real one may).  ``reset`` empties the caches but keeps the "system
  prompt initialised" mark, so units fed after it run without a system prompt
  (``units_without_prompt``).  ``update_session_config`` empties the caches and prefills the
  system prompt again with its ``voice_audio``.
* The server has no forced listening, no system prompt or language parameter.

Its "brain": after a unit with speech (RMS > 0.01) followed by a quiet unit it speaks a turn of
``turn_units`` units; with ``speak_at_start`` it starts talking on the first unit.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

RATE = 24_000
CHUNK_SAMPLES = 24_000
TAIL_SAMPLES = 2_880
TONE_HZ = 330.0
MODEL_FILES = (
    "vision/MiniCPM-o-4_5-vision-F16.gguf",
    "audio/MiniCPM-o-4_5-audio-F16.gguf",
    "tts/MiniCPM-o-4_5-tts-F16.gguf",
)
_EMPTY_BODY_OK = ("break", "reset", "update_session_config")
NOT_INITIALIZED = "omni context not initialized. call /v1/stream/omni_init first"


def make_model_dir(folder: Path) -> Path:
    """An empty stand-in of the GGUF folder (the files the fake checks for)."""
    for name in MODEL_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"GGUF")
    return folder


class Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    kinds = {400: "invalid_request_error", 404: "not_found_error", 503: "unavailable_error"}
    body = {
        "error": {"code": status, "message": message, "type": kinds.get(status, "server_error")}
    }
    return web.json_response(body, status=status)


def tone(samples: int, start: int = 0) -> np.ndarray:
    t = (np.arange(samples) + start) / RATE
    return (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@dataclass
class Context:
    """The omni context that ``omni_init`` creates."""

    output_dir: Path
    media_type: int
    duplex_mode: bool
    system_prompt: bool = False
    prompt_in_cache: bool = False
    threads: bool = False
    voice: str | None = None
    voice_readable: bool = False
    pending: list[dict[str, Any]] = field(default_factory=list)
    cache_units: int = 0
    decodes: int = 0
    in_turn: bool = False
    turn_left: int = 0
    heard: bool = False
    last_rms: float = 0.0
    wav_idx: int = 0
    spoken: int = 0


class FakeLlamaCppServer:
    """Run with ``start()``/``stop()`` (or as a context manager); ``url`` once started."""

    def __init__(
        self,
        *,
        turn_units: int = 3,
        speak_at_start: bool = False,
        continue_after_break: bool = False,
        tts_delay_s: float = 0.1,
        decode_s: float = 0.0,
    ) -> None:
        self.turn_units = turn_units
        self.speak_at_start = speak_at_start
        self.continue_after_break = continue_after_break
        self.tts_delay_s = tts_delay_s
        self.decode_s = decode_s
        self.loading = False
        self.fail_next: dict[str, tuple[int, str]] = {}
        """Path -> (status, message): that request fails once."""
        self.ctx: Context | None = None
        self.requests: deque[tuple[str, Any]] = deque(maxlen=10_000)
        self.units: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.deaf_units = 0
        self.units_without_prompt = 0
        self.breaks = 0
        self.resets = 0
        self.speech_files = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock: asyncio.Lock | None = None
        self._tts: asyncio.Queue[tuple[float, int, int, bool]] | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLlamaCppServer:
        self._thread = threading.Thread(target=self._run, name="fake-llamacpp", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the fake server did not start: {self._error}")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeLlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._tts = asyncio.Queue(maxsize=256)
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/health", self._health)
        for name in ("omni_init", "prefill", "decode", "break", "reset", "update_session_config"):
            app.router.add_post(f"/v1/stream/{name}", self._handler(name))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        vocoder = asyncio.create_task(self._vocoder(), name="fake-vocoder")
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            vocoder.cancel()
            await asyncio.gather(vocoder, return_exceptions=True)
            await runner.cleanup()

    # ------------------------------------------------------------------ routing

    async def _health(self, request: web.Request) -> web.Response:
        if self.loading:
            return _error(503, "Loading model")
        return web.json_response({"status": "ok"})

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, "File Not Found")

    def _handler(self, name: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                data = json.loads(raw) if raw or name not in _EMPTY_BODY_OK else {}
            except ValueError as exc:
                return _error(500, f"[json.exception.parse_error.101] parse error: {exc}")
            self.requests.append((name, data))
            injected = self.fail_next.pop(f"/v1/stream/{name}", None)
            if injected is not None:
                return _error(*injected)
            if not isinstance(data, dict):
                data = {}
            assert self._lock is not None
            try:
                if name == "decode":
                    return await self._decode(request, data)
                async with self._lock:
                    return web.json_response(getattr(self, f"_{name}")(data))
            except Failure as failure:
                return _error(failure.status, failure.message)

        return handle

    def _context(self) -> Context:
        if self.ctx is None:
            raise Failure(400, NOT_INITIALIZED)
        return self.ctx

    # ------------------------------------------------------------------ endpoints

    def _omni_init(self, data: dict[str, Any]) -> dict[str, Any]:
        media = data.get("msg_type", data.get("media_type"))
        if not isinstance(media, int) or isinstance(media, bool):
            raise Failure(
                400, '"msg_type" or "media_type" must be provided as integer (1=audio, 2=omni)'
            )
        model_dir = Path(str(data.get("model_dir", "./tools/omni/convert/gguf/")))
        self.ctx = None
        if not all((model_dir / name).is_file() for name in MODEL_FILES):
            raise Failure(500, "omni_init failed")
        ctx = Context(
            output_dir=Path(str(data.get("output_dir", "./tools/omni/output"))),
            media_type=media,
            duplex_mode=bool(data.get("duplex_mode", False)),
        )
        self.ctx = ctx
        voice = data.get("voice_audio")
        if isinstance(voice, str) and voice:
            self._system_prompt(ctx, voice)
        return {"success": True, "media_type": media, "use_tts": data.get("use_tts", True),
                "voice_audio_used": isinstance(voice, str) and bool(voice)}  # fmt: skip

    def _prefill(self, data: dict[str, Any]) -> dict[str, Any]:
        audio = data.get("audio_path_prefix")
        if not isinstance(audio, str):
            raise Failure(400, '"audio_path_prefix" must be provided as string')
        cnt = data.get("cnt")
        if not isinstance(cnt, int) or isinstance(cnt, bool):
            raise Failure(400, '"cnt" must be provided as integer')
        ctx = self._context()
        slices = data.get("max_slice_nums", -1)
        if not isinstance(slices, int) or isinstance(slices, bool):
            raise Failure(500, "[json.exception.type_error.302] type must be number")
        image = str(data.get("img_path_prefix", ""))
        if cnt == 0 and not ctx.system_prompt:
            self._system_prompt(ctx, audio)
        else:
            unit: dict[str, Any] = {"cnt": cnt, "max_slice_nums": slices, "image": None}
            if image:
                unit["image"] = self._read_image(image)
            samples = self._read_audio(audio)
            unit["samples"] = None if samples is None else samples.size
            unit["rms"] = 0.0 if samples is None else float(np.sqrt(np.mean(samples**2)))
            if samples is None:
                self.deaf_units += 1
            if not ctx.prompt_in_cache:
                self.units_without_prompt += 1
            ctx.pending.append(unit)
            self.units.append(unit)
        return {"success": True, "audio_path_prefix": audio, "img_path_prefix": image,
                "img_posfix": data.get("img_posfix", ""), "cnt": cnt}  # fmt: skip

    def _break(self, data: dict[str, Any]) -> dict[str, Any]:
        ctx = self._context()
        self.breaks += 1
        self._drop_speech(ctx)
        if not self.continue_after_break:
            ctx.in_turn = False
            ctx.turn_left = 0
        return {"success": True, "message": "generation interrupted"}

    def _reset(self, data: dict[str, Any]) -> dict[str, Any]:
        ctx = self._context()
        self.resets += 1
        ctx.cache_units = 0
        ctx.prompt_in_cache = False
        ctx.pending.clear()
        ctx.in_turn = ctx.heard = False
        ctx.turn_left = 0
        return {"success": True, "message": "KV caches cleared, ready for new session"}

    def _update_session_config(self, data: dict[str, Any]) -> dict[str, Any]:
        ctx = self._context()
        for key in ("media_type", "duplex_mode"):
            if key in data:
                value = data[key]
                wanted = bool if key == "duplex_mode" else int
                if not isinstance(value, wanted):
                    raise Failure(500, "[json.exception.type_error.302] type must be number")
                setattr(ctx, key, value)
        ctx.cache_units = 0
        ctx.prompt_in_cache = ctx.system_prompt = False
        ctx.pending.clear()
        ctx.in_turn = ctx.heard = False
        ctx.turn_left = ctx.decodes = 0
        voice = data.get("voice_audio")
        if isinstance(voice, str) and voice:
            self._system_prompt(ctx, voice)
        return {"success": True, "message": "Session config updated", "media_type": ctx.media_type,
                "duplex_mode": ctx.duplex_mode}  # fmt: skip

    async def _decode(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        assert self._lock is not None
        ctx = self._context()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async with self._lock:
            if not ctx.threads:
                # No model thread was ever started: the decode waits for it forever.
                while request.transport is not None and not request.transport.is_closing():
                    await asyncio.sleep(0.05)
                    if self._stop is not None and self._stop.is_set():
                        break
                return response
            if self.decode_s:
                await asyncio.sleep(self.decode_s)
            events = self._decide(ctx)
            for event in events:
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ the model

    def _decide(self, ctx: Context) -> list[dict[str, Any]]:
        units, ctx.pending = ctx.pending, []
        ctx.decodes += 1
        ctx.cache_units += len(units)
        if units:
            ctx.last_rms = max(u["rms"] for u in units)
        listen = {"content": "", "end_of_turn": True, "is_listen": True, "stop": False}
        if not ctx.in_turn:
            if self.speak_at_start and ctx.decodes == 1:
                ctx.in_turn, ctx.turn_left = True, self.turn_units
            elif ctx.last_rms > 0.01:
                ctx.heard = True
                return [listen]
            elif ctx.heard:
                ctx.heard = False
                ctx.in_turn, ctx.turn_left = True, self.turn_units
            else:
                return [listen]
        ctx.turn_left -= 1
        ctx.spoken += 1
        last = ctx.turn_left <= 0
        if last:
            ctx.in_turn = False
        assert self._tts is not None
        due = asyncio.get_running_loop().time() + self.tts_delay_s
        self._tts.put_nowait((due, CHUNK_SAMPLES, ctx.spoken * RATE, False))
        if last:
            self._tts.put_nowait((due, TAIL_SAMPLES, (ctx.spoken + 1) * RATE, True))
        word = f"word{ctx.spoken}"
        return [
            {"content": word, "end_of_turn": False, "is_listen": False, "stop": False},
            {"content": " ", "end_of_turn": False, "is_listen": False, "stop": False},
            {"content": "", "end_of_turn": True, "is_listen": False, "stop": True},
        ]

    def _system_prompt(self, ctx: Context, voice: str) -> None:
        ctx.voice = voice
        ctx.voice_readable = self._read_audio(voice) is not None
        ctx.system_prompt = ctx.prompt_in_cache = True
        if not ctx.threads:
            ctx.threads = True
            for sub in ("tts_txt", "llm_debug", "tts_wav"):
                (ctx.output_dir / sub).mkdir(parents=True, exist_ok=True)

    def _drop_speech(self, ctx: Context) -> None:
        assert self._tts is not None
        while not self._tts.empty():
            self._tts.get_nowait()
        ctx.wav_idx = 0

    async def _vocoder(self) -> None:
        assert self._tts is not None
        while True:
            due, samples, start, final = await self._tts.get()
            await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
            ctx = self.ctx
            if ctx is None:
                continue
            folder = ctx.output_dir / "tts_wav"
            folder.mkdir(parents=True, exist_ok=True)
            index = ctx.wav_idx
            ctx.wav_idx += 1
            await _write_wav_slowly(folder / f"wav_{index}.wav", tone(samples, start))
            self.speech_files += 1
            if final:
                (folder / "generation_done.flag").write_text(f"{index}\n")

    @staticmethod
    def _read_audio(path: str) -> np.ndarray | None:
        try:
            with wave.open(path, "rb") as file:
                if file.getsampwidth() != 2:
                    return None
                pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
                return pcm.reshape(-1, file.getnchannels()).mean(axis=1) / 32768.0
        except (OSError, wave.Error, EOFError):
            return None

    @staticmethod
    def _read_image(path: str) -> tuple[int, int]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.load()
                return image.size
        except (OSError, UnidentifiedImageError):
            raise Failure(500, "stream_prefill failed") from None


async def _write_wav_slowly(path: Path, audio: np.ndarray) -> None:
    """A 24 kHz 16-bit WAV written as the server does: header, then data, not atomically."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
    header += b"data" + struct.pack("<I", len(pcm))
    half = len(pcm) // 2
    with path.open("wb") as file:
        file.write(header + pcm[:half])
        file.flush()
        await asyncio.sleep(0.005)
        file.write(pcm[half:])

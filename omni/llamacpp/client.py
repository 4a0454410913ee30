"""A blocking client of the llama.cpp-omni server's ``/v1/stream/*`` HTTP API.

Runs on the replica's thread.  Every request has a timeout; every failure becomes an
``EngineError`` (``ServerError`` when the server answered with an error, ``ServerUnreachable``
when it did not answer).  What the server expects (read from its source, in our words):

* errors are ``{"error": {"code", "message", "type"}}`` with the HTTP status of ``code``
  (400 for a bad or early request: "omni context not initialized ...", 500 for a failure);
* ``omni_init`` (integer ``media_type``: 1 audio, 2 omni; ``use_tts``, ``duplex_mode``,
  ``model_dir``, ``tts_bin_dir``, ``output_dir``, optional ``voice_audio`` ...) loads the
  models and, with a voice, prefills the system prompt (unit 0);
* ``prefill`` (``audio_path_prefix``: a WAV path or "", ``img_path_prefix``: an image path or
  "", integer ``cnt``, optional ``max_slice_nums``) reads the files before it answers;
* ``decode`` answers with server-sent events ``data: {"content", "is_listen", "end_of_turn",
  "stop"}`` and a last ``data: [DONE]``;
* ``break``, ``reset`` and ``update_session_config`` answer ``{"success": true, ...}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from omni.api import EngineError

log = logging.getLogger(__name__)

MAX_EVENTS = 4096
"""Events one decode may send at most (a unit's text is a few dozen)."""
MAX_TEXT = 16_384
"""Characters of text one decode may send at most."""
MAX_ERROR_BODY = 4096


class ServerError(EngineError):
    """The server answered a request with an error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(EngineError):
    """The server did not answer (refused, reset, or too slow)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one decode said about the latest unit."""

    text: str
    """The model's text for the unit ('' when it listens)."""
    listen: bool
    """True when the model chose to listen (the ``is_listen`` event)."""
    events: int
    finished: bool
    """True when the stream ended with ``[DONE]``."""
    stopped_early: bool = False
    """True when the caller stopped reading before the end (barge-in)."""


def _error_message(response: httpx.Response) -> str:
    body = response.text[:MAX_ERROR_BODY]
    try:
        error = json.loads(body).get("error", {})
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    return body.strip() or response.reason_phrase


class OmniClient:
    """One llama.cpp-omni server at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        decode_timeout_s: float,
        init_timeout_s: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._request_timeout = httpx.Timeout(request_timeout_s, connect=connect_timeout_s)
        self._init_timeout = httpx.Timeout(init_timeout_s, connect=connect_timeout_s)
        self._decode_timeout = httpx.Timeout(decode_timeout_s, connect=connect_timeout_s)
        self._decode_limit_s = decode_timeout_s
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._request_timeout,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            trust_env=False,
        )

    # ------------------------------------------------------------------ requests

    def health(self) -> tuple[int, str]:
        """``GET /health``: the status and the server's message (503 while loading)."""
        with self._errors("/health"):
            response = self._http.get("/health")
        if response.status_code == 200:
            return 200, "ok"
        return response.status_code, _error_message(response)

    def omni_init(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("/v1/stream/omni_init", body, self._init_timeout)

    def update_session_config(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("/v1/stream/update_session_config", body)

    def prefill(
        self, audio_path: str, image_path: str, cnt: int, max_slice_nums: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "audio_path_prefix": audio_path,
            "img_path_prefix": image_path,
            "cnt": cnt,
        }
        if max_slice_nums is not None:
            body["max_slice_nums"] = max_slice_nums
        return self._post("/v1/stream/prefill", body)

    def break_(self, reason: str) -> dict[str, Any]:
        return self._post("/v1/stream/break", {"reason": reason})

    def reset(self) -> dict[str, Any]:
        return self._post("/v1/stream/reset", {"duplex_mode": True})

    def decode(self, debug_dir: str, stop: Callable[[], bool] | None = None) -> Decoded:
        """``POST /v1/stream/decode`` and read its events to ``[DONE]``; raises EngineError."""
        path = "/v1/stream/decode"
        body = {"stream": True, "debug_dir": debug_dir}
        deadline = time.monotonic() + self._decode_limit_s
        texts: list[str] = []
        size = events = 0
        listen = finished = stopped = False
        with (
            self._errors(path),
            self._http.stream("POST", path, json=body, timeout=self._decode_timeout) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise ServerError(
                    f"{self.base_url}{path}: {response.status_code} {_error_message(response)}",
                    response.status_code,
                )
            for data in _sse_data(response.iter_lines()):
                if data == "[DONE]":
                    finished = True
                    break
                events += 1
                event = _parse_event(data, self.base_url + path)
                content = event.get("content")
                if isinstance(content, str) and content:
                    texts.append(content)
                    size += len(content)
                if event.get("is_listen") is True:
                    listen = True
                if events > MAX_EVENTS or size > MAX_TEXT:
                    raise EngineError(f"{self.base_url}{path}: the decode does not end")
                if time.monotonic() > deadline:
                    raise ServerUnreachable(
                        f"{self.base_url}{path}: no end after {self._decode_limit_s:g} s"
                    )
                if stop is not None and stop():
                    stopped = True
                    break
        if not finished and not stopped:
            raise ServerUnreachable(f"{self.base_url}{path}: the event stream ended early")
        return Decoded("".join(texts), listen, events, finished, stopped)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ plumbing

    def _post(
        self, path: str, body: dict[str, Any], timeout: httpx.Timeout | None = None
    ) -> dict[str, Any]:
        with self._errors(path):
            response = self._http.post(path, json=body, timeout=timeout or self._request_timeout)
        if response.status_code != 200:
            raise ServerError(
                f"{self.base_url}{path}: {response.status_code} {_error_message(response)}",
                response.status_code,
            )
        try:
            answer = response.json()
        except ValueError:
            raise ServerError(f"{self.base_url}{path}: the answer is not JSON", 200) from None
        if not isinstance(answer, dict):
            raise ServerError(f"{self.base_url}{path}: the answer is not an object", 200)
        return answer

    @contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ServerUnreachable(
                f"{self.base_url}{path}: no answer in time ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"{self.base_url}{path}: {exc or type(exc).__name__}") from None


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` payload of each server-sent event (multi-line data joined by newlines)."""
    parts: list[str] = []
    for line in lines:
        if not line:
            if parts:
                yield "\n".join(parts)
                parts = []
            continue
        if line.startswith("data:"):
            parts.append(line[5:].removeprefix(" "))
    if parts:
        yield "\n".join(parts)


def _parse_event(data: str, where: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise EngineError(f"{where}: an event is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise EngineError(f"{where}: an event is not an object: {data[:80]!r}")
    return event

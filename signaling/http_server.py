"""The HTTP server under the app: aiohttp's, with our limits and our error responses.

What aiohttp already does, set from our settings:

- ``keepalive_timeout`` closes a connection whose next request's line and headers have not
  all arrived this long after it opened or after its previous response: the header timeout
  (``server.header_timeout_s``), which also bounds idle keep-alive connections;
- ``max_line_size`` / ``max_field_size`` bound the request line and each header field
  (``server.max_header_bytes``), ``max_headers`` their number.

What we add here:

- a cap on open connections (``server.max_connections``, see :mod:`signaling.connections`);
- requests the HTTP parser rejects (a header over the limit, a bad request line or header)
  get the JSON error every other error gets, without quoting what the client sent, and one
  log line instead of a traceback at ERROR.

Request bodies are bounded in time by :mod:`signaling.body_timeout`, in the app.

This module subclasses aiohttp's ``Server`` and ``RequestHandler`` (both exported by
``aiohttp.web``), overriding methods that aiohttp does not document
(``RequestHandler.handle_error`` and ``finish_response``, ``Server.__call__``,
``connection_made`` and ``connection_lost``) and the private ``AppRunner._make_server``, the
runner's factory of its server; it reads no private attribute.  That is why pyproject.toml
pins aiohttp's minor version.  The tests in ``tests/integration/test_malformed_requests.py``
and ``test_slow_clients.py`` exercise every override.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from signaling.connections import Admission, ConnectionGuard
from signaling.errors import error_response, from_protocol_error
from signaling.settings import ServerSettings

log = logging.getLogger(__name__)

MAX_HEADER_FIELDS = 128
"""Header fields per request at most (aiohttp's own default)."""
OPEN_FILES_RESERVED = 128
"""File descriptors kept back from the connection cap for everything else (listening
socket, logs, engine workers) ..."""
OPEN_FILES_PER_CALL = 16
"""... and for each call (its UDP sockets)."""

RequestFactory = Callable[
    [
        RawRequestMessage,
        StreamReader,
        web.RequestHandler,
        AbstractStreamWriter,
        "asyncio.Task[None]",
    ],
    web.BaseRequest,
]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    max_connections: int = 1024
    max_header_bytes: int = 8190

    @classmethod
    def from_settings(
        cls, server: ServerSettings, max_connections: int | None = None
    ) -> HttpLimits:
        return cls(
            header_timeout_s=server.header_timeout_s,
            max_connections=max_connections or server.max_connections,
            max_header_bytes=server.max_header_bytes,
        )

    def handler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of aiohttp's RequestHandler."""
        return {
            "keepalive_timeout": self.header_timeout_s,
            "max_line_size": self.max_header_bytes,
            "max_field_size": self.max_header_bytes,
            "max_headers": MAX_HEADER_FIELDS,
            "access_log": None,
        }


def fit_to_open_files(max_connections: int, open_files: int | None, max_calls: int) -> int:
    """The connection cap that leaves this process file descriptors for everything else."""
    if open_files is None:
        return max_connections
    room = open_files - OPEN_FILES_RESERVED - OPEN_FILES_PER_CALL * max_calls
    return max(8, min(max_connections, room))


class GuardedRequestHandler(web.RequestHandler):
    """One HTTP connection: aiohttp's, reporting to the guard and answering parser errors
    our way."""

    __slots__ = ("_guard",)

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard[web.RequestHandler],
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._guard.request_finished(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser rejected (or a failure no middleware caught)."""
        error = from_protocol_error(status, exc)
        if error.status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        elif isinstance(exc, http_exceptions.BadHttpMethod):
            # Not HTTP at all (TLS to this port, scanners): common, not worth a warning.
            log.debug("refused a non-HTTP request from %s: %s", request.remote, error.message)
        else:
            log.warning(
                "refused a malformed request from %s: %s (%d %s)",
                request.remote,
                error.message,
                error.status,
                error.code,
                extra={"status": error.status, "code": error.code},
            )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; cannot send an error")
        response = error_response(error)
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's protocol factory, making :class:`GuardedRequestHandler` connections and
    keeping their number within the cap."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        request_factory: RequestFactory,
        handler_cancellation: bool,
        guard: ConnectionGuard[web.RequestHandler],
        loop: asyncio.AbstractEventLoop,
        **handler_kwargs: Any,
    ) -> None:
        self.guard = guard
        self._app_request_factory = request_factory
        self._handler_loop = loop
        self._handler_kwargs = handler_kwargs
        super().__init__(
            handler,
            request_factory=self._make_request_tracked,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **handler_kwargs,
        )

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, guard=self.guard, loop=self._handler_loop, **self._handler_kwargs
        )

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        decision = self.guard.opened(handler)
        if decision.evicted is not None:
            decision.evicted.force_close()
        if decision.admission is Admission.REFUSED:
            transport.write(_REFUSAL)
            handler.force_close()

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self.guard.closed(handler)

    def _make_request_tracked(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # Called as the connection's handler takes up a complete request (headers in).
        self.guard.request_started(protocol)
        return self._app_request_factory(message, payload, protocol, writer, task)


def _refusal() -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": "the server has too many open connections; try again shortly",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _refusal()


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` serving through :class:`GuardedServer`."""

    def __init__(self, app: web.Application, limits: HttpLimits) -> None:
        super().__init__(app, access_log=None)
        self.limits = limits

    @property
    def guard(self) -> ConnectionGuard[web.RequestHandler] | None:
        server = self.server
        return server.guard if isinstance(server, GuardedServer) else None

    async def _make_server(self) -> web.Server:
        stock = await super()._make_server()  # runs the app's startup and freezes it
        loop = asyncio.get_running_loop()
        return GuardedServer(
            stock.request_handler,
            request_factory=stock.request_factory,
            handler_cancellation=stock.handler_cancellation,
            guard=ConnectionGuard(self.limits.max_connections, loop.time),
            loop=loop,
            **self.limits.handler_kwargs(),
        )

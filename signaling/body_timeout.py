"""A bound on how long a request body may take to arrive (``server.body_timeout_s``).

aiohttp bounds a body's size (``client_max_size``) but not its pace: a client that sends
one byte every few seconds holds a handler, and its connection, for as long as it likes.
This middleware arms one timer per request that has a body; if the body is still
incomplete when it fires, reading it raises :class:`BodyTimeout` (the error middleware
answers ``408`` and closes the connection).  The timer is cancelled when the handler
returns, so nothing outlives the request.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler, Middleware


class BodyTimeout(TimeoutError):
    """The request body did not arrive in time.

    A ``TimeoutError`` so that aiohttp, draining the rest of an unread body after the
    response, takes it as the end of that body and closes the connection quietly."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")
        self.timeout_s = timeout_s


def body_timeout_middleware(timeout_s: float) -> Middleware:
    @web.middleware
    async def body_timeout(request: web.Request, handler: Handler) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            return await handler(request)
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, content, timeout_s)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return body_timeout


def _expire(content: StreamReader, timeout_s: float) -> None:
    if not content.is_eof() and content.exception() is None:
        content.set_exception(BodyTimeout(timeout_s))

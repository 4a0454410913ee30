"""A second web server on another port of 127.0.0.1 (another origin), for pages that call the
omnirtc server across origins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def other_site(pages: Mapping[str, Page]) -> AsyncIterator[str]:
    """Serve ``pages`` (path -> handler); yields the site's origin."""
    app = web.Application()
    for path, handler in pages.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()

"""CORS: which other sites' pages may call the API and import the client module.

A page on another origin (say ``https://app.example.com``) that imports
``/static/omnirtc.js`` and posts an offer to ``/v1/calls`` needs the browser's permission,
which the server grants per origin (``server.cors_origins``):

- every response under ``/v1/`` and ``/static/`` carries ``Vary: Origin`` (it depends on the
  request's origin, so caches must keep the variants apart);
- a response to an allowed origin carries ``Access-Control-Allow-Origin`` (that origin, or
  ``*`` when every origin is allowed) and exposes ``Location`` and ``Retry-After``;
- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered ``204`` for an
  allowed origin asking for a method the resource has and only the headers we accept
  (``Content-Type``, ``Authorization``); anything else gets ``403 cors_rejected`` without
  CORS headers, which the browser reports as a blocked request.

Other requests from a disallowed origin are not refused here: the browser does not let the page
read the answer (nor send a JSON POST or a DELETE, which need a preflight), and same-origin
requests carry an ``Origin`` too.  No credentials (cookies) are ever allowed.

This is a small middleware of our own rather than ``aiohttp-cors`` (0.8.1): that package
never sends ``Vary: Origin`` (aio-libs/aiohttp-cors#351, open since 2021), is untyped, and has
seen no release since 2025-03.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from signaling.errors import ApiError, error_response

CORS_PATH_PREFIXES = ("/v1/", "/static/")
"""Paths other origins may use: the API and the client module (and the page's assets)."""
ALLOWED_HEADERS = ("Content-Type", "Authorization", "If-Match")
EXPOSED_HEADERS = ("Location", "Retry-After", "ETag", "Link", "Accept-Patch")
PREFLIGHT_MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str]
    """Allowed origins, lower case."""
    any_origin: bool = False

    @classmethod
    def from_settings(cls, origins: Iterable[str]) -> CorsPolicy:
        listed = frozenset(o.lower() for o in origins)
        return cls(origins=listed - {"*"}, any_origin="*" in listed)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def allow_origin_value(self, origin: str) -> str:
        return "*" if self.any_origin else origin


def cors_middleware(policy: CorsPolicy) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(CORS_PATH_PREFIXES):
            return await handler(request)
        origin = request.headers.get(hdrs.ORIGIN)
        unrouted = request.match_info.http_exception
        if (
            request.method == hdrs.METH_OPTIONS
            and origin is not None
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
            and isinstance(unrouted, web.HTTPMethodNotAllowed)
        ):
            # A preflight for a resource that exists (without an OPTIONS route of its own).
            response: web.StreamResponse = _preflight(
                request, origin, frozenset(unrouted.allowed_methods), policy
            )
        else:
            response = await handler(request)
            if origin is not None and policy.allows(origin):
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = policy.allow_origin_value(
                    origin
                )
                response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSED_HEADERS)
        _add_vary(response, hdrs.ORIGIN)
        return response

    return cors


def _preflight(
    request: web.Request, origin: str, methods: frozenset[str], policy: CorsPolicy
) -> web.Response:
    wanted_method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD].strip().upper()
    wanted_headers = {
        h.strip().lower()
        for h in request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").split(",")
        if h.strip()
    }
    extra = sorted(wanted_headers - {h.lower() for h in ALLOWED_HEADERS})
    if not policy.allows(origin):
        reason = "this origin may not use the API (the server's cors_origins)"
    elif wanted_method not in methods:
        reason = f"allowed methods here: {', '.join(sorted(methods))}"
    elif extra:
        reason = f"allowed request headers: {', '.join(ALLOWED_HEADERS)}"
    else:
        response = web.Response(status=204)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = policy.allow_origin_value(origin)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(sorted(methods))
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(ALLOWED_HEADERS)
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(PREFLIGHT_MAX_AGE_S)
        _add_vary(response, hdrs.ACCESS_CONTROL_REQUEST_METHOD)
        _add_vary(response, hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
        return response
    return error_response(ApiError(403, "cors_rejected", f"CORS preflight refused: {reason}"))


def _add_vary(response: web.StreamResponse, header: str) -> None:
    present = [v.strip() for v in response.headers.get(hdrs.VARY, "").split(",") if v.strip()]
    if "*" in present or header.lower() in (v.lower() for v in present):
        return
    response.headers[hdrs.VARY] = ", ".join([*present, header])

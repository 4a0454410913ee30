"""The one place where errors become HTTP responses: JSON ``{"error": {code, message}}``.

``to_api_error`` maps any failure (ours, the call runtime's, the engines', aiohttp's, or an
ExceptionGroup of them, every member read) to the response a client gets; the middleware and
the call manager both use it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import http_exceptions, web

from omni.errors import EngineBusy, EngineError
from realtime.errors import CallError, leaves
from signaling.body_timeout import BodyTimeout

log = logging.getLogger(__name__)

MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
RETRY_AFTER_S = 5
"""What a busy or starting server tells clients to wait before they try again (s)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An HTTP error response: ``status``, a stable ``code`` and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.close = close
        """Close the connection after answering (the rest of the body may be on its way)."""


def busy(message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, "busy", message, {"Retry-After": str(retry_after_s)})


def error_response(error: ApiError) -> web.Response:
    response = web.json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.status,
        headers=error.headers,
    )
    if error.close:
        response.force_close()
    return response


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def from_protocol_error(status: int, exc: BaseException | None) -> ApiError:
    """A request the HTTP parser rejected (or a failure outside every middleware).

    The message is ours: never the parser's, which quotes what the client sent."""
    if isinstance(exc, http_exceptions.LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the allowed"
        message = f"the request line or a header field is longer than {limit} bytes"
        return ApiError(431, "headers_too_large", message)
    if isinstance(exc, http_exceptions.HttpProcessingError):
        if "too many headers" in exc.message.lower():
            return ApiError(431, "headers_too_large", "the request has too many header fields")
        return ApiError(400, "bad_request", _protocol_message(exc))
    if status == 504:
        return ApiError(504, "timeout", "the request took too long")
    return ApiError(500, "internal_error", "internal error")


def _protocol_message(exc: http_exceptions.HttpProcessingError) -> str:
    if isinstance(exc, http_exceptions.BadHttpMethod):
        if "HTTPS" in exc.message:
            return "this port speaks plain HTTP, not HTTPS"
        return "the request method is not valid"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "the request line is not valid HTTP/1.x"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "the request target is not a valid URL"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "a request header is not valid"
    if isinstance(exc, http_exceptions.PayloadEncodingError):
        return "the request body's framing or encoding is not valid"
    return "the request is not valid HTTP/1.x"


def to_api_error(exc: BaseException, where: str = "") -> ApiError:
    """The response for ``exc``: the first member of a known kind wins (our own ApiError, then
    a call's or an engine's error, then a broken body); anything else is logged here, with
    its traceback, and answered 500 with no details."""
    found = leaves(exc)
    for leaf in found:
        if isinstance(leaf, ApiError):
            return leaf
    for leaf in found:
        if isinstance(leaf, CallError):
            return ApiError(400, leaf.code, str(leaf))
        if isinstance(leaf, EngineBusy):
            return busy(str(leaf), RETRY_AFTER_S)
        if isinstance(leaf, EngineError):
            return ApiError(503, leaf.code, str(leaf), {"Retry-After": str(RETRY_AFTER_S)})
        if isinstance(leaf, BodyTimeout):
            return ApiError(408, "body_timeout", str(leaf), close=True)
        if isinstance(leaf, web.RequestPayloadError):
            # The body's framing broke mid-way (chunk sizes, Content-Length, compression).
            return ApiError(400, "bad_request", "the request body is malformed", close=True)
    log.error("unhandled error%s", f" on {where}" if where else "", exc_info=exc)
    return ApiError(500, "internal_error", "internal error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            limit = request.app.get(MAX_BODY_BYTES)
            message = f"the request body is larger than {limit} bytes" if limit else message
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(ApiError(exc.status, code, message, headers))
    except Exception as exc:
        return error_response(to_api_error(exc, f"{request.method} {request.path}"))

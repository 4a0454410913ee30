"""The one place where errors become HTTP responses: JSON ``{"error": {code, message}}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import http_exceptions, web

from realtime.errors import CallError
from signaling.body_timeout import BodyTimeout

log = logging.getLogger(__name__)

MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def busy(message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, "busy", message, {"Retry-After": str(retry_after_s)})


def error_response(error: ApiError) -> web.Response:
    return web.json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.status,
        headers=error.headers,
    )


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


def from_call_error(exc: CallError) -> ApiError:
    return ApiError(400, exc.code, str(exc))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except CallError as exc:
        return error_response(from_call_error(exc))
    except BodyTimeout as exc:
        # The rest of the body may still be on its way: answer, then close the connection.
        response = error_response(ApiError(408, "body_timeout", str(exc)))
        response.force_close()
        return response
    except web.RequestPayloadError:
        # The body's framing broke mid-way (chunk sizes, Content-Length, compression).
        response = error_response(ApiError(400, "bad_request", "the request body is malformed"))
        response.force_close()
        return response
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
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal_error", "internal error"))

"""The one place where errors become HTTP responses: JSON ``{"error": {code, message}}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from realtime.errors import CallError

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
    413: "body_too_large",
    415: "unsupported_media_type",
}


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

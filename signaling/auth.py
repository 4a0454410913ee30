"""Who may call: static API keys from the settings, and short-lived call tokens minted with one.

Auth is on once ``auth.api_keys`` lists a key; then every ``/v1/`` request (the JSON API,
WHIP, the token endpoint, the Realtime WebSocket) needs ``Authorization: Bearer <secret>``,
where the secret is an API key or a token.  The call page, ``/static/``, ``/healthz`` and
``/readyz`` stay public.

* An API key may start calls (up to its ``max_calls`` at once) and read, change or end the
  calls it started, or that tokens minted with it started.
* ``POST /v1/tokens`` (with an API key only) mints a token for a page or device that must not
  hold the key: it expires after ``auth.token_ttl_s``, starts at most one call, and reaches
  only that call.  Tokens are HMAC-signed with ``auth.token_secret`` (random at each start when
  empty, so tokens die with the process; set it when several gateways mint and check them).

With auth off everyone is the same anonymous caller and may reach every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from signaling.errors import ApiError
from signaling.settings import AuthSettings

_MAX_USED_TOKENS = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from."""

    key: str
    """The API key's name ("" when auth is off)."""
    max_calls: int
    """Calls this key may have at once (0 = only the server's limit)."""
    token: str | None = None
    """The token's id when the request came with a token, not with the key itself."""

    @property
    def anonymous(self) -> bool:
        return self.key == ""


ANONYMOUS = Principal(key="", max_calls=0)
PRINCIPAL = web.RequestKey("principal", Principal)
"""Where the middleware leaves the request's Principal (``request[PRINCIPAL]``)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a call belongs to: the key that started it, and the token if one did."""

    key: str
    token: str | None

    def admits(self, principal: Principal) -> bool:
        """Whether ``principal`` may read, change or end the call."""
        if principal.key != self.key:
            return False
        return principal.token is None or principal.token == self.token

    @staticmethod
    def of(principal: Principal) -> Owner:
        return Owner(principal.key, principal.token)


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = {k.key: k for k in settings.api_keys}
        self._ttl = settings.token_ttl_s
        secret = settings.token_secret or secrets.token_urlsafe(32)
        self._secret = secret.encode()
        self._used: OrderedDict[str, float] = OrderedDict()
        """Tokens that started their call (id -> expiry), until they expire."""

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, request: web.Request) -> Principal:
        """The request's principal; raises ApiError 401 when auth is on and it has none."""
        if not self.enabled:
            return ANONYMOUS
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _unauthorized("send Authorization: Bearer <API key or token>")
        secret = secret.strip()
        for candidate, key in self._keys.items():
            if hmac.compare_digest(candidate.encode(), secret.encode()):
                return Principal(key.name, key.max_calls)
        return self._from_token(secret)

    def mint(self, principal: Principal) -> tuple[str, float]:
        """A new call token for ``principal``'s key, and its lifetime in seconds."""
        if principal.token is not None:
            raise ApiError(403, "forbidden", "a token cannot mint tokens; use the API key")
        claims = {
            "k": principal.key,
            "exp": round(time.time() + self._ttl, 3),
            "id": secrets.token_urlsafe(12),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._sign(payload))}", self._ttl

    def spend(self, principal: Principal) -> None:
        """A token is starting its call: refuse a second one (ApiError 403)."""
        if principal.token is None:
            return
        now = time.time()
        while self._used and next(iter(self._used.values())) < now:
            self._used.popitem(last=False)
        if principal.token in self._used:
            raise ApiError(403, "token_used", "this token has already started its call")
        if len(self._used) >= _MAX_USED_TOKENS:
            raise ApiError(503, "busy", "too many live tokens; try again shortly")
        self._used[principal.token] = now + self._ttl

    def refund(self, principal: Principal) -> None:
        """The token's call did not start after all: it may start one again."""
        if principal.token is not None:
            self._used.pop(principal.token, None)

    def _from_token(self, secret: str) -> Principal:
        payload, _, signature = secret.partition(".")
        try:
            valid = hmac.compare_digest(_unb64(signature), self._sign(payload))
            claims = json.loads(_unb64(payload)) if valid else None
        except (ValueError, UnicodeDecodeError):
            claims = None
        if not isinstance(claims, dict):
            raise _unauthorized("the API key or token is not valid")
        key = next((k for k in self._keys.values() if k.name == claims.get("k")), None)
        expiry = claims.get("exp")
        if key is None or not isinstance(expiry, int | float):
            raise _unauthorized("the token's key is no longer valid")
        if expiry < time.time():
            raise _unauthorized("the token has expired")
        return Principal(key.name, key.max_calls, token=str(claims.get("id")))

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="omnirtc"'})


def principal_of(request: web.Request) -> Principal:
    """The principal the middleware found for ``request`` (anonymous outside ``/v1/``)."""
    found: Principal = request.get(PRINCIPAL, ANONYMOUS)
    return found


def auth_middleware(authenticator: Authenticator) -> Middleware:
    """Identifies every ``/v1/`` request (401 without valid credentials when auth is on)."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.method != hdrs.METH_OPTIONS:
            request[PRINCIPAL] = authenticator.identify(request)
        return await handler(request)

    return auth

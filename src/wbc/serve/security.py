"""Security of ``wbc serve``: API keys, logins for the web page, rate limits, and the browser protections.

Two layers, one rule set (both call :meth:`Authenticator.authorize`):

* :class:`SecurityMiddleware` (pure ASGI, outermost) runs before a request body is read. It answers
  400 for a ``Host`` not on the allow-list (DNS rebinding), 403 for a cross-site request that changes
  something (``Sec-Fetch-Site`` / ``Origin``: a web page the lab user visits cannot make the server work),
  401 without a valid key, 429 over the per-key rate limit, 408 when a body stalls or drips, and
  adds CSP, ``nosniff`` and ``frame-ancestors`` headers to every answer. A CORS preflight (no key) goes on, after the
  Host check, to :class:`JsonCORSMiddleware` when ``--allowed-origin`` is set. Only :data:`PUBLIC_PATHS` (liveness,
  the login form and its style sheet) are open.
* :func:`require_api_key`, a FastAPI dependency, for every router. It returns the caller's
  :class:`Identity` and documents the key in the OpenAPI schema. **Every router of the app uses it**::

      from fastapi import APIRouter, Depends
      from wbc.serve.security import Identity, require_api_key

      router = APIRouter(prefix="/cases", dependencies=[Depends(require_api_key)])

      @router.get("")
      def list_cases(who: Identity = Depends(require_api_key)) -> ...: ...

  and :func:`wbc.serve.app.create_app` includes the router (``app.include_router(router)``).

Keys come from ``WBC_API_KEYS`` (comma-separated) or a key file (:mod:`wbc.serve.settings`); a client
sends one as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. The web page logs in once with a key at
``/login`` and then carries an HttpOnly, ``SameSite=Strict`` session cookie, which counts only for requests from
this server's own pages (:meth:`Authenticator.authorize`). Without any key configured
the server is open, which :func:`check_binding` allows on loopback only. Keys are kept as SHA-256 digests
and compared in constant time; a caller is named by the digest's first 8 hex digits, never by the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wbc.errors import WbcError
from wbc.serve.settings import ServeSettings

#: Paths open without a key: liveness for monitors, the login form with its style sheet and icon, and signing out
#: (which needs no identity: since wbc 0.35.0, so that **Sign out** after the session ended clears the cookie).
PUBLIC_PATHS: frozenset[str] = frozenset({"/health", "/login", "/logout", "/static/style.css", "/static/favicon.svg"})
#: The sign-in form's routes, open without a key: their bodies are a key and a path (``next``), so they take at most
#: :data:`FORM_MAX_BYTES`, form-urlencoded (or nothing), refused before a byte is read (since wbc 0.35.0; before,
#: anyone could make the server read and spool 25 MiB multipart bodies there).
FORM_PATHS: frozenset[str] = frozenset({"/login", "/logout"})
FORM_MAX_BYTES: int = 8 * 1024
FORM_CONTENT_TYPE: str = "application/x-www-form-urlencoded"
#: Login sessions kept in memory at most; past it, the oldest ends (a key holder signing in in a loop).
MAX_SESSIONS: int = 10_000
SESSION_COOKIE: str = "wbc_session"
#: Addresses that only this machine can reach.
LOOPBACK_ADDRESSES: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})
UNSAFE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The page loads nothing from elsewhere; images are data: (annotated fields) or blob: (local thumbnails).
CONTENT_SECURITY_POLICY: str = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" would make Chromium send Origin: null on forms
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityProblem(HTTPException):
    """A refused request: ``status_code``, a short machine-readable ``error`` and a sentence for people."""

    def __init__(self, status_code: int, error: str, detail: str, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=dict(headers or {}))
        self.error = error


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``key:<8 hex digits of the key's SHA-256>``, or ``anonymous`` when keys are off."""

    name: str

    @property
    def anonymous(self) -> bool:
        return self.name == "anonymous"


ANONYMOUS = Identity("anonymous")
#: A request to one of :data:`PUBLIC_PATHS`.
PUBLIC = Identity("public")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


#: What a request costs against its key's rate limit: reading (a crop, a case, the page) is a tenth of a
#: request that makes the server work (analyse, classify, change a case), so that a review page loading
#: hundreds of cell thumbnails at once is never refused.
READ_COST: float = 0.1


class RateLimiter:
    """A token bucket per caller: ``per_minute`` sustained, bursts up to ``burst``; thread-safe."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, now: float | None = None, cost: float = 1.0) -> float:
        """0 when ``who`` may proceed (``cost`` tokens are spent), else the seconds until there are enough."""
        return self._take(who, now, cost, spend=True)

    def wait(self, who: str, now: float | None = None, cost: float = 1.0) -> float:
        """The seconds until ``who`` has ``cost`` tokens (0: now), spending none."""
        return self._take(who, now, cost, spend=False)

    def _take(self, who: str, now: float | None, cost: float, spend: bool) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._buckets) > 10_000:  # forget callers whose buckets have refilled (login attempts by IP)
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if v[0] + (now - v[1]) * self.rate < self.burst}
            tokens, last = self._buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= cost:
                if spend:
                    self._buckets[who] = (tokens - cost, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (cost - tokens) / self.rate


#: How long a wrong key is remembered per address: sent again within it, it is no new guess.
WRONG_KEY_MEMORY_S: float = 600.0


class WrongKeys:
    """The wrong API keys sent from each client address, limited by how many *different* ones it sends: a token bucket
    per address (``per_minute`` sustained, ``burst`` at once) spent once per key not seen from there within
    :data:`WRONG_KEY_MEMORY_S`. A script repeating one stale key in a loop costs one guess, so that it cannot lock out
    a right key sent from the same address (a NAT, a proxy); a dictionary of distinct keys is still limited. Before
    wbc 0.33.0 every wrong key spent a token, and one such script kept its address refused. Thread-safe."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.limiter = RateLimiter(per_minute, burst)
        self._seen: dict[str, dict[bytes, float]] = {}  # address -> digest of a wrong key -> when last sent
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """The seconds until ``client`` may send a key that is checked (0: now)."""
        return self.limiter.wait(guesses_of(client))

    def count(self, client: str, key: str, now: float | None = None) -> None:
        """Charge ``client`` for the wrong ``key``, unless it sent the same one lately."""
        now = time.monotonic() if now is None else now
        d = _digest(key)
        with self._lock:
            if len(self._seen) > 10_000:  # forget addresses that sent no wrong key lately
                self._seen = {a: s for a, s in self._seen.items()
                              if any(t > now - WRONG_KEY_MEMORY_S for t in s.values())}
            seen = {k: t for k, t in self._seen.get(client, {}).items() if t > now - WRONG_KEY_MEMORY_S}
            self._seen[client] = seen
            if d in seen:
                seen[d] = now
                return
            if self.limiter.take(guesses_of(client), now) == 0:  # remembered only when charged: at most the bucket's
                seen[d] = now


class Authenticator:
    """API keys (as digests), web-page sessions and the per-key rate limit of one app."""

    def __init__(self, keys: Iterable[str], settings: ServeSettings) -> None:
        self._keys = {_digest(k): Identity("key:" + _digest(k).hex()[:8]) for k in keys}
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_burst)
        self.wrong_keys = WrongKeys(settings.key_guesses_per_minute, settings.key_guess_burst)
        self._sessions: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether keys are required (at least one key is configured)."""
        return bool(self._keys)

    def check_key(self, key: str) -> Identity | None:
        """The identity of ``key``, or None; every stored digest is compared, in constant time."""
        d = _digest(key)
        found = None
        for known, ident in self._keys.items():
            if hmac.compare_digest(known, d):
                found = ident
        return found

    def new_session(self, ident: Identity) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._sessions = {t: v for t, v in self._sessions.items() if v[1] > now}  # drop expired ones
            for old in list(self._sessions)[:max(0, len(self._sessions) - MAX_SESSIONS + 1)]:  # oldest first
                del self._sessions[old]
            self._sessions[token] = (ident, now + 3600 * self.settings.session_hours)
        return token

    def end_session(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Identity | None:
        """The caller named by ``X-API-Key``, ``Authorization: Bearer`` or the session cookie, else None."""
        if not self.enabled:
            return ANONYMOUS
        key = sent_key(headers)
        if key:
            return self.check_key(key)
        token = cookies.get(SESSION_COOKIE)
        if token:
            with self._lock:
                ident, expires = self._sessions.get(token, (None, 0.0))
            if ident is not None and expires > time.time():
                return ident
        return None

    def authorize(self, headers: Mapping[str, str], cookies: Mapping[str, str], method: str = "POST",
                  client: str | None = None) -> Identity:
        """The caller's identity, with the request counted against its rate limit (reads at :data:`READ_COST`).

        The session cookie counts only for this server's own pages: a browser sends it from a same-site page
        too (``SameSite=Strict`` stops only other sites), and a page of an ``--allowed-origin`` may post, so such
        a page would act as whoever is signed in. A request from another origin (:func:`from_another_origin`)
        needs its own key.

        A wrong key in a header (``X-API-Key``, ``Authorization: Bearer``; another scheme, a proxy's ``Basic``, is no
        key) costs its ``client`` address a guess (:class:`WrongKeys`, shared with the login form); once they are spent,
        any key from that address is refused before it is checked, so that guessing gets no answer either way. This
        refuses a right key from a shared address too (kept: to check it would answer the guesses); that takes many
        *different* wrong keys, as one repeated is one guess. Before wbc 0.33.0 wrong keys in headers cost nothing: a
        dictionary attack ran at wire speed beside the login form's limit.

        Raises :class:`SecurityProblem`: 401 without a valid key, 429 over the limit (``Retry-After``).
        """
        key = sent_key(headers)
        key_given = key is not None
        guesser = client if key is not None and client and self.enabled else None
        if guesser and (wait := self.wrong_keys.wait(guesser)) > 0:
            raise self.too_many_wrong_keys(wait)
        foreign = from_another_origin(headers)
        ident = self.identify(headers, {} if foreign else cookies)
        if ident is None:
            if guesser and key is not None:
                self.wrong_keys.count(guesser, key)
            if foreign and not key_given and cookies.get(SESSION_COOKIE):
                detail = (f"a request from another origin ({headers.get('origin')}) needs an API key: send X-API-Key: "
                          "KEY or Authorization: Bearer KEY (the web page's session counts only for its own pages)")
            elif key_given:
                detail = "invalid API key"
            elif cookies.get(SESSION_COOKIE):  # no key was sent: "invalid API key" named none of what happened
                detail = "your session has ended (signed out, expired, or the server restarted): sign in again"
            else:
                detail = "an API key is required: send X-API-Key: KEY or Authorization: Bearer KEY"
            raise SecurityProblem(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="wbc"'})
        if ident.anonymous:
            return ident
        wait = self.limiter.take(ident.name, cost=1.0 if method.upper() in UNSAFE_METHODS else READ_COST)
        if wait > 0:
            raise SecurityProblem(429, "rate_limited",
                                  f"more than {self.settings.rate_limit_per_minute} requests a minute with this "
                                  "key; slow down", {"Retry-After": str(max(1, round(wait + 0.5)))})
        return ident

    @staticmethod
    def too_many_wrong_keys(wait: float) -> SecurityProblem:
        """The 429 of an address whose wrong keys are spent. It names the address, not the key: the client reading it
        may hold a right key, refused because another client behind the same NAT or proxy sent wrong ones."""
        retry = max(1, round(wait + 0.5))
        return SecurityProblem(429, "rate_limited", "too many invalid API keys from this address (a NAT or proxy "
                               "shares it: every client behind it counts); no key from it is checked for "
                               f"{retry} s", {"Retry-After": str(retry)})


def sent_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request sends (``X-API-Key``, else ``Authorization: Bearer``), or None. Another
    ``Authorization`` scheme is no key: a proxy's HTTP Basic sign-in was counted as a wrong key before wbc 0.33.0.

    >>> sent_key({"authorization": "Bearer k1"}), sent_key({"authorization": "Basic YTpi"}), sent_key({})
    ('k1', None, None)
    """
    key = headers.get("x-api-key")
    if not key:
        scheme, _, value = (headers.get("authorization") or "").partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else None
    return key or None


def guesses_of(client: str) -> str:
    """The rate-limit bucket of key guesses from one address: the login form's wrong keys and those in headers."""
    return f"login:{client}"


# --------------------------------------------------------------------------- the FastAPI dependency

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An API key of this server (WBC_API_KEYS or --api-key-file).")
bearer_scheme = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


async def require_api_key(
    request: Request,
    _key: Annotated[str | None, Security(api_key_header)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> Identity:
    """The caller's :class:`Identity`; 401/429 otherwise. Use it on every router (see the module docstring).

    The middleware has usually checked the request already (before its body was read) and left the
    identity in ``request.state``; without the middleware the check runs here, so a router is never open.
    """
    ident = getattr(request.state, "wbc_identity", None)
    if isinstance(ident, Identity):
        return ident
    if request.url.path in PUBLIC_PATHS:  # liveness and the login form
        return PUBLIC
    auth = getattr(request.app.state, "authenticator", None)
    if not isinstance(auth, Authenticator):  # fail closed: a router mounted in an app without wbc security
        raise SecurityProblem(500, "misconfigured", "this server has no authenticator (build it with create_app)")
    ident = auth.authorize(request.headers, request.cookies, request.method,
                           request.client.host if request.client else None)
    request.state.wbc_identity = ident
    return ident


#: ``Depends(require_api_key)``, for ``APIRouter(dependencies=[API_KEY])`` and ``FastAPI(dependencies=...)``.
API_KEY = Depends(require_api_key)


# --------------------------------------------------------------------------- checks without a framework


def host_allowed(host_header: str, allowed: Iterable[str]) -> bool:
    """Whether a ``Host`` header (with or without port, IPv6 in brackets) names an allowed host."""
    allowed = [a.lower() for a in allowed]
    if "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return bool(host) and host in allowed


def normal_origin(origin: str) -> str:
    """An origin as browsers write it in ``Origin`` (lower case, no trailing slash), for comparing with a setting.

    >>> normal_origin("https://LIMS.example.org/")
    'https://lims.example.org'
    """
    return origin.strip().rstrip("/").lower()


def from_another_origin(headers: Mapping[str, str]) -> bool:
    """Whether a browser says the request comes from a page of another origin than this server's: it sends
    ``Origin`` (fetch() and form posts do; following a link does not) with ``Sec-Fetch-Site`` other than
    ``same-origin``/``none``, or, from a browser too old for that header, an ``Origin`` naming another host.

    >>> from_another_origin({"origin": "https://lims.lab", "sec-fetch-site": "same-site"})
    True
    >>> from_another_origin({"origin": "http://wbc.lab", "sec-fetch-site": "same-origin"}), from_another_origin({})
    (False, False)
    """
    origin = headers.get("origin")
    if origin is None:
        return False
    site = (headers.get("sec-fetch-site") or "").lower()
    if site:
        return site not in ("same-origin", "none")
    return origin == "null" or urlsplit(origin).netloc.lower() != (headers.get("host") or "").lower()


def cross_site_problem(method: str, headers: Mapping[str, str], allowed_origins: Iterable[str]) -> str | None:
    """Why an unsafe (state-changing) request from another site is refused, else None.

    Browsers say where a request comes from: ``Sec-Fetch-Site`` (``same-origin`` or ``none`` for the
    page itself and for typed URLs; set by the browser, never by a page's script) and ``Origin``, which older
    browsers send alone. Non-browser clients send neither and pass. A page of one of ``allowed_origins``
    (``--allowed-origin``) passes: current browsers send its ``Origin`` with ``Sec-Fetch-Site: cross-site`` or
    ``same-site``, which alone would be refused.
    """
    if method.upper() not in UNSAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin not in (None, "null") and normal_origin(origin) in {normal_origin(o) for o in allowed_origins}:
        return None
    site = (headers.get("sec-fetch-site") or "").lower()
    if site:
        return None if site in ("same-origin", "none") else f"cross-site request refused (Sec-Fetch-Site: {site})"
    if origin is None:
        return None
    if origin == "null":
        return "request from an opaque origin refused (Origin: null)"
    netloc = urlsplit(origin).netloc.lower()
    if netloc and netloc == (headers.get("host") or "").lower():
        return None
    return f"cross-site request refused (Origin: {origin})"


def check_binding(host: str, keys_configured: bool) -> None:
    """Refuse to listen beyond loopback without API keys (raises :class:`WbcError`)."""
    if host.strip("[]") not in LOOPBACK_ADDRESSES and not keys_configured:
        raise WbcError(f"listening on {host} needs API keys: set WBC_API_KEYS or pass --api-key-file "
                       "(only 127.0.0.1, ::1 and localhost may run without)")


def _json_response(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "detail": detail, "errors": []}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a request is a browser's CORS preflight, as Starlette's CORS middleware tells one (and answers it)."""
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware for ``--allowed-origin`` pages, a refused preflight answered as every error is: JSON
    (403 ``cross_site``), inside :class:`SecurityMiddleware` (Host checked first, security headers). Before wbc 0.31.0
    it was outermost and answered ``400 text/plain "Disallowed CORS origin"``, without those headers, before the
    Host check."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers=request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode("utf-8", "replace").removeprefix("Disallowed CORS ")
        return _json_response(403, "cross_site", f"CORS preflight refused (Origin: {request_headers.get('origin')}; "
                              f"not allowed: {refused}): this server answers the pages of its --allowed-origin sites "
                              "only, for GET and POST with X-API-Key, Authorization and Content-Type")


def _wants_html(method: str, headers: Mapping[str, str]) -> bool:
    return method in ("GET", "HEAD") and "text/html" in (headers.get("accept") or "")


class SecurityMiddleware:
    """Host and cross-site checks, authentication and rate limit before the body is read; security
    headers on every answer; a deadline for the request body. See the module docstring."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator
        self.settings = authenticator.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # no websockets are served today; any future one gets the same checks (Origin included)
        if scope["type"] == "websocket" and self._refusal(scope, Headers(scope=scope), "POST") is not None:
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names:  # the page's scripts: revalidated (ETag, 304), never run stale
                    static = scope["path"].startswith("/static/")
                    extra.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = Headers(scope=scope)
        method = scope["method"]
        problem = self._refusal(scope, headers, method)
        if problem is not None:
            if problem.status_code == 401 and _wants_html(method, headers):  # signed in, back to this page
                query = scope.get("query_string", b"").decode("latin-1")
                here = scope.get("root_path", "") + scope["path"] + (f"?{query}" if query else "")
                response: Response = HTMLResponse(login_page(next_path=here), status_code=401)
            else:  # a page of an --allowed-origin may read why (CORS, inside, never sees this answer)
                response = _json_response(problem.status_code, problem.error, str(problem.detail),
                                          {**(problem.headers or {}), **self._cors_headers(headers)})
            await response(scope, receive, send_with_headers)
            return
        receive = self._deadline(receive)
        if method == "POST" and scope["path"] in FORM_PATHS:
            receive = _form_limited(receive)
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception:
            # Starlette's own 500 (ServerErrorMiddleware, outside this one) was text/plain without the headers above
            # (wbc 0.34.0). Answered here as every error is; raised on, for the server's log
            if not started:
                await _json_response(500, "internal_error", "the server failed on this request (the error is in "
                                     "its log); try again, or tell whoever runs it",
                                     self._cors_headers(headers))(scope, receive, send_with_headers)
            raise

    def _refusal(self, scope: Scope, headers: Headers, method: str) -> SecurityProblem | None:
        if not host_allowed(headers.get("host", ""), self.settings.allowed_hosts):
            # names the refused Host only: the allow-list holds this machine's names (no answer for strangers)
            return SecurityProblem(400, "host_not_allowed", f"Host {headers.get('host', '')!r} is not served here "
                                   "(the server's --allowed-host / WBC_ALLOWED_HOSTS lists the names it answers)")
        if why := cross_site_problem(method, headers, self.settings.allowed_origins):
            return SecurityProblem(403, "cross_site", why)
        if self.settings.allowed_origins and is_preflight(method, headers):
            return None  # no key: answered by JsonCORSMiddleware, inside, never by the app
        if method == "POST" and scope["path"] in FORM_PATHS and (problem := form_problem(headers)) is not None:
            return problem
        if scope["path"] in PUBLIC_PATHS and scope["type"] == "http":
            return None
        cookies = _cookies(headers)
        client = scope.get("client")
        try:
            ident = self.auth.authorize(headers, cookies, method, str(client[0]) if client else None)
        except SecurityProblem as exc:
            return exc
        scope.setdefault("state", {})["wbc_identity"] = ident
        return None

    def _cors_headers(self, headers: Headers) -> dict[str, str]:
        """What the CORS middleware adds to an answer to a page of an ``--allowed-origin``, else nothing."""
        origin = headers.get("origin")
        if origin and normal_origin(origin) in {normal_origin(o) for o in self.settings.allowed_origins}:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def _deadline(self, receive: Receive) -> Receive:
        """``receive`` that raises 408 when the body comes too slowly: fewer than ``body_min_bytes`` (at least one)
        in the last ``body_timeout_s`` spent waiting for it, so that a body stalling, or dripping a byte at a time,
        cannot hold its connection and spooled part indefinitely. Only the time spent waiting for the client counts,
        not the app's own between reads.

        A rate floor, not a deadline for the whole body: before wbc 0.33.0 a body had to be complete 30 s after its
        first read, so a 25 MiB upload needed 7 Mbit/s, and the web page's batches failed over slower links while
        they arrived steadily; in the first cut of 0.33.0 any byte restarted the 30 s, and 20 connections dripping a
        byte each 29 s were never cut off.
        """
        timeout = self.settings.body_timeout_s
        floor = max(1, self.settings.body_min_bytes)
        waited = 0.0  # seconds spent waiting for the body's bytes
        arrivals: deque[tuple[float, int]] = deque()  # (waited, bytes) of the latest pieces, just enough for `floor`
        held = 0  # their bytes
        complete = False

        def due() -> float:
            """When (in ``waited``) the last ``timeout`` seconds will have brought fewer than ``floor`` bytes."""
            need = floor
            for at, n in reversed(arrivals):
                need -= n
                if need <= 0:
                    return at + timeout
            return timeout  # the body's first seconds: the floor from its start

        async def timed() -> Message:
            nonlocal waited, held, complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline then
                return await receive()
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, due() - waited))
            except TimeoutError:
                got = sum(n for at, n in arrivals if at > waited + loop.time() - start - timeout)
                why = (f"no data for {timeout:g} s" if not got else
                       f"{got} bytes in the last {timeout:g} s, fewer than the {floor} required")
                raise SecurityProblem(408, "body_timeout", f"the request body stalled: {why}") from None
            finally:
                waited += loop.time() - start
            if n := len(msg.get("body") or b""):
                arrivals.append((waited, n))
                held += n
                while held - arrivals[0][1] >= floor:  # the newer pieces bring the floor by themselves: the oldest
                    held -= arrivals.popleft()[1]  # is never needed again
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                complete = True
            return msg

        return timed


def form_problem(headers: Mapping[str, str]) -> SecurityProblem | None:
    """Why a POST to the sign-in form's routes (:data:`FORM_PATHS`) is refused before its body is read, else None: a
    ``Content-Length`` over :data:`FORM_MAX_BYTES` (413 ``too_large``), or a content type other than the form's
    (415 ``unsupported_media_type``; none, as a body-less ``curl -X POST`` sends, is let through).

    >>> form_problem({"content-type": "multipart/form-data; boundary=x"}).status_code
    415
    >>> form_problem({"content-type": FORM_CONTENT_TYPE, "content-length": "10000000"}).status_code
    413
    >>> form_problem({"content-type": FORM_CONTENT_TYPE + "; charset=UTF-8", "content-length": "60"}) is None
    True
    """
    length = headers.get("content-length") or ""
    if length.isdigit() and int(length) > FORM_MAX_BYTES:
        return form_too_large()
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype and ctype != FORM_CONTENT_TYPE:
        return SecurityProblem(415, "unsupported_media_type", f"the sign-in form takes {FORM_CONTENT_TYPE} "
                               f"(got content type {ctype!r})")
    return None


def form_too_large() -> SecurityProblem:
    return SecurityProblem(413, "too_large", f"the sign-in form's body is over {FORM_MAX_BYTES // 1024} KiB "
                           "(it holds a key and a path)")


def _form_limited(receive: Receive) -> Receive:
    """``receive`` that raises 413 once a chunked body (no ``Content-Length``) passes :data:`FORM_MAX_BYTES`."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        msg = await receive()
        received += len(msg.get("body") or b"")
        if received > FORM_MAX_BYTES:
            raise form_too_large()
        return msg

    return limited


def _cookies(headers: Headers) -> dict[str, str]:
    """The request's cookies, read as ``request.cookies`` reads them (Starlette's lenient parser, as browsers do).

    ``http.cookies.SimpleCookie`` stopped at the first cookie it found illegal and returned none: another
    application on the same host (browsers keep cookies per host, not per port) setting one with a space, a quote
    or JSON in it signed the browser out of this one after every login (wbc 0.28.0).
    """
    from starlette.requests import cookie_parser

    return cookie_parser(headers.get("cookie", ""))


# --------------------------------------------------------------------------- the web page's login


def safe_next(path: str | None) -> str:
    r"""``path`` when it is a path on this server (``/review?case=3``), else ``/``: after signing in, the browser
    goes back to the page it came from, never to another site (no open redirect).

    >>> [safe_next(p) for p in ("/review?case=3", "//evil.example/", "https://evil.example/", "/\\evil", "x", None)]
    ['/review?case=3', '/', '/', '/', '/', '/']
    """
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 2000:
        return "/"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "/"
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return path


def login_page(error: str = "", next_path: str | None = None) -> str:
    """A plain login form (no script; the style sheet is the page's own); ``next_path``: where to go once signed
    in (:func:`safe_next`)."""
    msg = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    back = safe_next(next_path)
    nxt = f'<input type="hidden" name="next" value="{html.escape(back)}">' if back != "/" else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>wbc: sign in</title><link rel="icon" href="/static/favicon.svg"><link rel="stylesheet" href="/static/style.css">
</head><body><main class="login"><h1>wbc</h1>
<p>This server needs an access key. Ask the person who runs it for one.</p>{msg}
<form method="post" action="/login"><label for="key">Access key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>{nxt}
<button class="primary" type="submit">Sign in</button></form></main></body></html>
"""


login_router = APIRouter(include_in_schema=False)


@login_router.get("/login")
def login_form(next_path: Annotated[str, Query(alias="next")] = "/") -> HTMLResponse:
    return HTMLResponse(login_page(next_path=next_path))


@login_router.post("/login")
def login(request: Request, key: Annotated[str, Form()] = "",
          next_path: Annotated[str, Form(alias="next")] = "/") -> Response:
    """Check the key from the form; on success set the session cookie and go back to the page the form was
    shown for (``next``, a path on this server only: :func:`safe_next`), else to the main page."""
    auth: Authenticator = request.app.state.authenticator
    client = request.client.host if request.client else "unknown"
    if auth.enabled and (wait := auth.wrong_keys.wait(client)) > 0:  # as keys in headers (Authenticator.authorize)
        return HTMLResponse(login_page(f"Too many invalid keys from this address; try again in "
                                       f"{max(1, round(wait + 0.5))} s.", next_path), status_code=429)
    ident = auth.check_key(key) if auth.enabled else ANONYMOUS
    if ident is None:
        auth.wrong_keys.count(client, key)
        return HTMLResponse(login_page("That key is not valid.", next_path), status_code=401)
    resp = RedirectResponse(safe_next(next_path), status_code=303)
    if auth.enabled:
        resp.set_cookie(SESSION_COOKIE, auth.new_session(ident), max_age=int(3600 * auth.settings.session_hours),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return resp


@login_router.post("/logout")
def logout(request: Request) -> Response:
    auth: Authenticator = request.app.state.authenticator
    if token := request.cookies.get(SESSION_COOKIE):
        auth.end_session(token)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


def describe(auth: Authenticator) -> dict[str, Any]:
    """What ``/health`` says about security (never the keys)."""
    s = auth.settings
    return {"api_keys": auth.enabled, "rate_limit_per_minute": s.rate_limit_per_minute if auth.enabled else None,
            "body_timeout_s": s.body_timeout_s}

"""HTTP security shared by the web apps (the annotation app, lifecycle/preferences/app.py, and the serving API,
lifecycle/serve/app.py): signed session cookies and CSRF tokens, the same-origin check for POSTs, a request
body limit, security headers, and per-credential rate limits, as pure ASGI middleware.

    signer = Signer(session_key, csrf_key); cookie = signer.session(user_id, token_hash)  # "<id>.<issued>.<hmac>"
    same_origin(origin, fetch_site, scheme, host, public_url)      # whether a POST comes from this site
    app.add_middleware(BodyLimit, max_bytes=16384)      # 413 on a larger Content-Length or streamed body
                                                        # (problem=fn(status, message) shapes the error body)
    app.add_middleware(SecurityHeaders)
    limiter = RateLimiter(per_minute=600, burst=120)    # per_minute=0: no limit
    app.add_middleware(RateLimit, limiter=limiter, key=lambda scope: ..., problem=lambda msg: {"detail": msg})

Rate limits: an in-memory token bucket per key, answering 429 with `Retry-After` before the app runs.
`key(scope)` names the credential a request is counted against (a bearer token, a session cookie, a client
address) or returns None for requests that are never limited (health, static files). Keys are hashed before
they are held, so no token stays in memory in clear. The buckets live in one process: with several server
processes each keeps its own, and the limit is per process. The session cookie signs the user id, the issue
time and the user's token hash, so revoking the token (the hash is cleared) ends every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "lifecycle_session"
SESSION_MAX_AGE_S = 12 * 3600  # one working day: a sign-in should not outlive the shift it was made for
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
# Swagger UI comes from FastAPI's default CDN; its start-up script is a file under /static (no inline code).

def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


class Signer:
    """Session cookies and CSRF tokens, keyed by two server-side secrets shared by every app process."""

    def __init__(self, session_key: str, csrf_key: str) -> None:
        self._session_key, self._csrf_key = session_key, csrf_key

    def session(self, annotator_id: int, token_hash: str) -> str:
        head = f"{annotator_id}.{int(time.time())}"
        return f"{head}.{_mac(self._session_key, f'{head}.{token_hash}')}"

    def annotator(self, cookie: str | None) -> int | None:
        """The annotator id of a well-formed, unexpired cookie (its signature is checked by `valid`)."""
        parts = (cookie or "").split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or len(parts[2]) != 64:
            return None
        if not 0 <= time.time() - int(parts[1]) <= SESSION_MAX_AGE_S:
            return None
        return int(parts[0])

    def valid(self, cookie: str, token_hash: str | None) -> bool:
        head, _, mac = cookie.rpartition(".")
        return token_hash is not None and hmac.compare_digest(mac, _mac(self._session_key, f"{head}.{token_hash}"))

    def csrf(self, cookie: str) -> str:
        return _mac(self._csrf_key, cookie)

    def csrf_ok(self, cookie: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token or "", self.csrf(cookie))


def origin_of(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


def same_origin(origin: str | None, fetch_site: str | None, scheme: str, host: str | None,
                public_url: str | None) -> bool:
    """Whether a POST comes from this site. A real Origin must be this site's (or public_url's). Under
    `Referrer-Policy: no-referrer` browsers send `Origin: null` even for same-origin form and fetch POSTs, so
    then the Fetch Metadata header decides (`Sec-Fetch-Site: same-origin`). A request with neither (curl,
    scripts: no ambient cookie to abuse) passes."""
    if origin is not None and origin != "null":
        return origin.lower() in {f"{scheme}://{host}".lower() if host else None, origin_of(public_url)} - {None}
    if fetch_site is not None:
        return fetch_site == "same-origin"
    return origin is None


class TooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit (FastAPI lets HTTPExceptions through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def send_json(send: Send, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413: by Content-Length before the app runs, and by counting
    the bytes of a chunked (length-less) body as the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 problem: Callable[[int, str], dict[str, object]] | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.problem = problem or (lambda _status, message: {"detail": message})  # the error body's shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await send_json(send, 400, self.problem(400, "Content-Length is not a number"))
                return
            if int(length) > self.max_bytes:
                await send_json(send, 413, self.problem(413, f"request body over {self.max_bytes} bytes"))
                return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge as err:  # read outside FastAPI's body parsing (which answers it itself)
            if not started:
                await send_json(send, 413, self.problem(413, err.detail))


class SecurityHeaders:
    """CSP (scripts and styles only from files of this site), no sniffing, no framing, no referrer, and no
    caching of anything but static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
                if not path.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


MAX_KEYS = 10_000  # buckets held; the least recently used goes first (it comes back full: a fresh burst)


class RateLimiter:
    """Token buckets: each key holds up to `burst` requests, refilled evenly at `per_minute` a minute."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = per_minute / 60.0, burst, clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """Spend one request of `key`'s bucket: 0.0 when allowed, else the seconds until it would be."""
        if not self.enabled:
            return 0.0
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(digest, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[digest] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) / self.rate


class RateLimit:
    """Answers 429 (body from `problem(message)`, `Retry-After` in whole seconds) to a request whose key's
    bucket is empty; requests with no key pass untouched."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, key: Callable[[Scope], str | None],
                 problem: Callable[[str], dict[str, object]]) -> None:
        self.app, self.limiter, self.key, self.problem = app, limiter, key, problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key(scope) if scope["type"] == "http" and self.limiter.enabled else None
        wait = self.limiter.take(key) if key is not None else 0.0
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        minute = round(self.limiter.rate * 60)
        payload = json.dumps(self.problem(f"too many requests: at most {minute} a minute (bursts of "
                                          f"{self.limiter.burst}); retry after {retry_after} s")).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"retry-after", str(retry_after).encode()),
            (b"connection", b"close")]})  # the request body is left unread
        await send({"type": "http.response.body", "body": payload})


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if the request has one."""
    scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def client_address(scope: Scope) -> str:
    """The client's address as the server sees it (behind a trusted proxy, uvicorn puts X-Forwarded-For here)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"

"""HTTP plumbing of the annotation app (lifecycle/preferences/app.py): who is asking (bearer token or signed
session cookie, checked against the store on every request), CSRF tokens, the same-origin check for POSTs,
a request body limit and security headers as pure ASGI middleware, and what a request's rate is counted by.

    guard = Guard(store, Signer(store.secret("session"), store.secret("csrf")), public_url)
    who = guard.api(creds)          # creds from the api_creds dependency (no DB); 401 unless they check out
    guard.origin(request); guard.csrf(creds, request.headers.get("x-csrf-token"))   # 403 for a POST that fails
    cookie = guard.signer.session(annotator_id, token_hash)                          # "<id>.<issued>.<hmac>"
    app.add_middleware(BodyLimit, max_bytes=16384)      # 413 on a larger Content-Length or streamed body
                                                        # (problem=fn(status, message) shapes the error body)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RateLimit, limiter=RateLimiter(600, 120), key=rate_key, ...)   # lifecycle/ratelimit.py

The session cookie signs the annotator id, the issue time and the annotator's token hash, so revoking the
annotator (the hash is cleared) ends every session at once; the hash itself never leaves the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.preferences.schema import Annotator
from lifecycle.preferences.store import PreferenceStore
from lifecycle.ratelimit import bearer_token, client_address

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


BEARER = HTTPBearer(auto_error=False, description="an annotator token from `lifecycle annotators add NAME`")
_SESSION_ANNOTATOR = select(Annotator.name, Annotator.token_hash).where(Annotator.id == bindparam("id"),
                                                                        Annotator.active)


@dataclass(frozen=True)
class Creds:
    """What a request presented: a bearer token, or else a session cookie (CSRF rules apply to cookies)."""

    token: str | None
    cookie: str | None


@dataclass(frozen=True)
class Who:
    id: int
    name: str
    cookie: str | None  # the session cookie, when signed in by one


class SignInFirst(Exception):
    """A page was asked for without a valid sign-in: the app answers with a redirect to /login."""


def _creds(request: Request, auth: HTTPAuthorizationCredentials | None) -> Creds:
    token = auth.credentials if auth else None
    return Creds(token, None if token else request.cookies.get(SESSION_COOKIE))


async def credentials(request: Request, auth: HTTPAuthorizationCredentials | None = Security(BEARER)) -> Creds:
    return _creds(request, auth)


async def api_creds(request: Request, auth: HTTPAuthorizationCredentials | None = Security(BEARER)) -> Creds:
    creds = _creds(request, auth)  # no database here: an anonymous request is refused before its body is read
    if creds.token is None and creds.cookie is None:
        raise HTTPException(401, "sign in: a bearer token or a session cookie", {"WWW-Authenticate": "Bearer"})
    return creds


async def page_creds(request: Request, auth: HTTPAuthorizationCredentials | None = Security(BEARER)) -> Creds:
    creds = _creds(request, auth)
    if creds.token is None and creds.cookie is None:
        raise SignInFirst()
    return creds


def rate_key(scope: Scope) -> str | None:
    """What a request's rate is counted against: its bearer token, else its session cookie; a sign-in attempt,
    its client address. Health, static files and the API reference are not limited, nor are requests without
    credentials (refused before any database work)."""
    path = scope.get("path", "")
    if path == "/login":
        return f"login:{client_address(scope)}" if scope.get("method") == "POST" else None
    if path in ("/healthz", "/docs", "/openapi.json") or path.startswith("/static/"):
        return None
    token = bearer_token(scope)
    if token is not None:
        return f"token:{token}"
    cookie = Request(scope).cookies.get(SESSION_COOKIE)
    return f"session:{cookie}" if cookie else None


class Guard:
    """Checks credentials against the store on every request, so a revoked token, or a revoked annotator's
    session, stops working at once; POSTs must be same-origin and, with a cookie, carry the CSRF token."""

    def __init__(self, store: PreferenceStore, signer: Signer, public_url: str | None) -> None:
        self.store, self.signer, self.public_url = store, signer, public_url

    def who(self, creds: Creds) -> Who | None:
        if creds.token is not None:
            found = self.store.authenticate(creds.token)
            return Who(found[0], found[1], None) if found else None
        annotator_id = self.signer.annotator(creds.cookie)
        if annotator_id is None or creds.cookie is None:
            return None
        with self.store.engine.connect() as c:
            row = c.execute(_SESSION_ANNOTATOR, {"id": annotator_id}).first()
        if row is None or not self.signer.valid(creds.cookie, row.token_hash):
            return None
        return Who(annotator_id, row.name, creds.cookie)

    def api(self, creds: Creds) -> Who:
        who = self.who(creds)
        if who is None:
            raise HTTPException(401, "unknown, expired or revoked credentials", {"WWW-Authenticate": "Bearer"})
        return who

    def page(self, creds: Creds) -> Who:
        who = self.who(creds)
        if who is None:
            raise SignInFirst()
        return who

    def origin(self, request: Request) -> None:
        if not same_origin(request.headers.get("origin"), request.headers.get("sec-fetch-site"), request.url.scheme,
                           request.headers.get("host"), self.public_url):
            raise HTTPException(403, f"cross-origin POST from {request.headers.get('origin')} refused")

    def csrf(self, creds: Creds, token: str | None) -> None:
        if creds.token is None and creds.cookie is not None and not self.signer.csrf_ok(creds.cookie, token):
            raise HTTPException(403, "missing or wrong CSRF token (X-CSRF-Token header); reload the page")

"""Who is asking the annotation app (lifecycle/preferences/app.py): an annotator's bearer token or signed
session cookie, checked against the preference store on every request; the CSRF and same-origin checks of a
POST; and what a request's rate is counted by. The HTTP security itself (cookies, CSRF tokens, origin
check, body limit, headers, rate limits) is lifecycle/web_security.py, shared with the serving API.

    guard = Guard(store, Signer(store.secret("session"), store.secret("csrf")), public_url)
    who = guard.api(creds)          # creds from the api_creds dependency (no DB); 401 unless they check out
    guard.origin(request); guard.csrf(creds, request.headers.get("x-csrf-token"))   # 403 for a POST that fails
    app.add_middleware(RateLimit, limiter=RateLimiter(600, 120), key=rate_key, ...)

The session cookie signs the annotator id, the issue time and the annotator's token hash, so revoking the
annotator (the hash is cleared) ends every session at once; the hash itself never leaves the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from starlette.exceptions import HTTPException
from starlette.types import Scope

from lifecycle.preferences.schema import Annotator
from lifecycle.preferences.store import PreferenceStore
from lifecycle.web_security import SESSION_COOKIE, Signer, bearer_token, client_address, same_origin

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

"""Per-credential rate limits for the web apps (the annotation app and the serving API): an in-memory token
bucket per key, and pure ASGI middleware that answers 429 with a `Retry-After` header before the app runs.

    limiter = RateLimiter(per_minute=600, burst=120)     # per_minute=0: no limit
    wait = limiter.take("token:" + token)                # 0.0: allowed; else seconds until one is
    app.add_middleware(RateLimit, limiter=limiter, key=lambda scope: ..., problem=lambda msg: {"detail": msg})

`key(scope)` names the credential a request is counted against (a bearer token, a session cookie, a client
address) or returns None for requests that are never limited (health, static files). Keys are hashed before
they are held, so no token stays in memory in clear. The buckets live in one process: with several server
processes each keeps its own, and the limit is per process.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

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

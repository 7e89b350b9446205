"""The serving app: the OpenAI-shaped API over the served chat model(s), a health endpoint, the chat page and
its feedback endpoint.

    app = create_app(models, cfg.serve, store, experiment_id, api_key=os.environ.get(...))
    run_server(app, host, port)                  # lifecycle/preferences/app.py: `lifecycle serve` does both

Routes: GET / (chat page), GET /health, GET /metrics (Prometheus: lifecycle/serve/metrics.py), GET /v1/models,
POST /v1/chat/completions (stream or not), POST /v1/feedback (ratings and comparisons, into the preference
store), GET /openapi.json.
With an API key, /v1/* and /metrics need `Authorization: Bearer <key>` (compared in constant time, never
logged); the page asks for it. /v1/* requests are rate limited per key (without one, per client address): over
serve.server.rate_limit_per_minute, 429 `rate_limit_exceeded` with Retry-After. POSTs from a browser must
be same-origin. Errors come in OpenAI's shape.
While the app runs, a thread follows the served aliases (lifecycle/serve/models.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException
from starlette.routing import Mount
from starlette.types import Scope

from lifecycle.config.serve import ServeConfig
from lifecycle.preferences.feedback import Answered, FeedbackRefused, record_comparison, record_rating
from lifecycle.preferences.store import PreferenceStore
from lifecycle.web_security import (BodyLimit, RateLimit, RateLimiter, SecurityHeaders, bearer_token, client_address,
                                    same_origin)
from lifecycle.registry import CHALLENGER
from lifecycle.serve import api
from lifecycle.serve.completions import Completions
from lifecycle.serve.metrics import RequestMetrics, ServeMetrics
from lifecycle.serve.models import Served, ServedModels
from lifecycle.serve.tracing import log_rating

log = logging.getLogger("lifecycle.serve")
HERE = Path(__file__).parent
CLIENT_COOKIE = "lifecycle_client"  # a random id per browser: the canary's draw for the chat page
CLIENT_PATTERN = re.compile(r"[0-9a-f]{32}")
CLIENT_MAX_AGE_S = 30 * 24 * 3600
BEARER = HTTPBearer(auto_error=False, description="the key in the environment variable serve.server.api_key_env")


class Handlers:
    def __init__(self, models: ServedModels, cfg: ServeConfig, store: PreferenceStore | None,
                 experiment_id: str | None, api_key: str | None, reload: bool) -> None:
        self.models, self.cfg, self.store, self.api_key, self.reload = models, cfg, store, api_key, reload
        self.metrics = ServeMetrics(models)
        models.on_event = self.metrics.model_event
        self.chat = Completions(models, cfg, experiment_id, self.metrics)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
        self.pages = Jinja2Templates(env=env)

    async def auth(self, creds: HTTPAuthorizationCredentials | None = Security(BEARER)) -> None:
        if self.api_key is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise api.ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                               code="invalid_api_key")

    def rate_key(self, scope: Scope) -> str | None:
        """The API's requests count per key presented (a wrong one never drains the right one's), or without
        a configured key per client address; the page, health and static files are not limited."""
        if not scope.get("path", "").startswith("/v1/"):
            return None
        return f"key:{bearer_token(scope)}" if self.api_key is not None else f"addr:{client_address(scope)}"

    def same_site(self, request: Request) -> None:
        if not same_origin(request.headers.get("origin"), request.headers.get("sec-fetch-site"), request.url.scheme,
                           request.headers.get("host"), self.cfg.server.public_url):
            raise api.ApiError(403, f"cross-origin POST from {request.headers.get('origin')} refused")

    def prometheus(self) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def page(self, request: Request) -> Response:
        page = self.pages.TemplateResponse(request, "chat.html", {"name": self.models.name,
                                                                  "needs_key": self.api_key is not None})
        if not CLIENT_PATTERN.fullmatch(request.cookies.get(CLIENT_COOKIE, "")):  # the canary's draw per browser
            page.set_cookie(CLIENT_COOKIE, uuid.uuid4().hex, max_age=CLIENT_MAX_AGE_S, httponly=True, samesite="strict")
        return page

    def health(self) -> dict[str, Any]:
        served = self.models.all()
        challenger = served.get("challenger")
        return {"status": "ok", "model": self.models.name,
                "served": {s.served_as: s.describe() for s in served.values()},
                "models": {"primary": served["primary"].label, "challenger": challenger.label if challenger else None},
                "reload": {"follows": self.models.primary if self.models.follow else None, "enabled": self.reload,
                           "interval_s": self.cfg.server.reload_interval_s, "last_error": self.models.last_error},
                "tracing": self.chat.experiment_id is not None, "feedback": self.store is not None,
                "auth": self.api_key is not None,
                "traffic": {"challenger_share": self.cfg.traffic.challenger_share if challenger else 0.0},
                "live": self.metrics.live()}

    def list_models(self) -> dict[str, Any]:
        served = self.models.all()
        cards = {self.models.name: api.model_card(self.models.name, served["primary"].created)}
        for s in served.values():
            for model_id in (s.label, str(s.ref)):
                cards.setdefault(model_id, api.model_card(model_id, s.created))
        return {"object": "list", "data": list(cards.values())}

    def sticky(self, request: Request, body: api.ChatRequest) -> str:
        """Who asks, for the canary's draw: the request's `user`, the chat page's client cookie, the API key
        (hashed, never kept in clear), else the client address."""
        if body.user:
            return f"user:{body.user}"
        if cookie := request.cookies.get(CLIENT_COOKIE):
            return f"client:{cookie}"
        if token := bearer_token(request.scope):
            return f"key:{hashlib.sha256(token.encode()).hexdigest()}"
        return f"addr:{client_address(request.scope)}"

    def completions(self, request: Request, body: api.ChatRequest) -> Response:
        self.same_site(request)
        sticky = self.sticky(request, body)
        if body.stream:
            events, served = self.chat.stream(body, sticky)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"X-Accel-Buffering": "no"} | answered_by(served))
        reply, served = self.chat.complete(body, sticky)
        return JSONResponse(reply, headers=answered_by(served))

    def _answer(self, cid: str) -> Answered:
        found = self.chat.recall(cid)
        if found is None:
            raise api.ApiError(404, f"completion {cid!r} is not held here (the last "
                                    f"{self.cfg.server.recent_answers} answers are): ask again", "completion_id")
        return found

    def feedback(self, request: Request, body: api.RatingIn | api.CompareIn) -> dict[str, Any]:
        self.same_site(request)
        if self.store is None:
            raise api.ApiError(503, "this server has no preference store to record feedback in")
        who = self.cfg.server.feedback_annotator
        try:
            if isinstance(body, api.RatingIn):
                answer = self._answer(body.completion_id)
                status = record_rating(self.store, body.feedback_id, who, answer, body.score)
                if status == "created":
                    log_rating(answer.trace_id, "user_rating", body.score, who)
                    self.metrics.rated(answer.model, body.score)
                return {"status": status, "feedback_id": body.feedback_id}
            left, right = self._answer(body.left), self._answer(body.right)
            swap = left.alias == CHALLENGER and right.alias != CHALLENGER  # canonical a: the champion's answer
            a, b = (right, left) if swap else (left, right)
            picked = {"left": left, "right": right}.get(body.choice)
            choice = "tie" if picked is None else "a" if picked is a else "b"
            status = record_comparison(self.store, body.feedback_id, who, a, b, "b" if swap else "a", choice,
                                       self.models.name)
        except FeedbackRefused as err:
            raise api.ApiError(err.status, str(err)) from None
        if status == "created":
            for answer, letter in ((a, "a"), (b, "b")):
                result = "tie" if choice == "tie" else "won" if choice == letter else "lost"
                log_rating(answer.trace_id, "chat_compare", result, who)
                self.metrics.compared(answer.model, result)
        return {"status": status, "feedback_id": body.feedback_id}


def answered_by(served: Served) -> dict[str, str]:
    """The response headers naming the version that answered and the alias it was served under."""
    return {"X-Lifecycle-Model": str(served.ref), "X-Lifecycle-Alias": served.served_as}


def _handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, err: api.ApiError) -> Response:
        return JSONResponse(err.body(), err.status)

    async def http_error(_request: Request, err: HTTPException) -> Response:
        return JSONResponse(api.error_body(err.status_code, str(err.detail)), err.status_code, err.headers)

    async def invalid(_request: Request, err: RequestValidationError) -> Response:
        first = (err.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(api.error_body(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", where), 400)

    async def failed(_request: Request, err: Exception) -> Response:
        log.error("request failed: %s: %s", type(err).__name__, err)
        return JSONResponse(api.error_body(500, f"the server failed: {type(err).__name__}", code="server_error"), 500)

    app.add_exception_handler(api.ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, failed)
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]


def create_app(models: ServedModels, cfg: ServeConfig, store: PreferenceStore | None = None,
               experiment_id: str | None = None, api_key: str | None = None, reload: bool = True) -> FastAPI:
    """The serving app over loaded `models`; traces go to `experiment_id` (None: no tracing), feedback to
    `store` (None: refused with 503). With `reload`, the aliases are followed while the app runs."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if reload:
            models.start_polling(cfg.server.reload_interval_s)
        try:
            yield
        finally:
            models.stop_polling()

    app = FastAPI(title="llm-lifecycle chat", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    h = Handlers(models, cfg, store, experiment_id, api_key or None, reload)
    app.add_middleware(BodyLimit, max_bytes=cfg.server.max_body_bytes, problem=api.error_body)
    app.add_middleware(RateLimit, limiter=RateLimiter(cfg.server.rate_limit_per_minute, cfg.server.rate_limit_burst),
                       key=h.rate_key, problem=lambda m: api.error_body(429, m, code="rate_limit_exceeded"))
    app.add_middleware(SecurityHeaders)
    paths: set[str] = set()  # the route paths, once declared below: the request metrics' route label
    app.add_middleware(RequestMetrics, metrics=h.metrics, paths=paths)  # outermost: it sees 401, 413 and 429 too
    app.mount("/static/shared", StaticFiles(directory=HERE.parent / "preferences" / "static"), name="shared")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _handlers(app)
    authed: dict[str, Any] = {"dependencies": [Depends(h.auth)]}
    app.get("/", include_in_schema=False, response_class=HTMLResponse)(h.page)
    app.get("/favicon.ico", include_in_schema=False)(lambda: Response(status_code=204))
    app.get("/health", summary="What is served: versions per alias, their RAG index, when loaded")(h.health)
    app.get("/metrics", summary="Serving metrics in Prometheus' text format", include_in_schema=False,
            **authed)(h.prometheus)
    app.get("/v1/models", summary="The model ids requests may name", **authed)(h.list_models)
    app.post("/v1/chat/completions", summary="A RAG answer in OpenAI's chat.completion shape (+ sources)",
             **authed)(h.completions)

    def feedback(request: Request, body: api.Feedback) -> dict[str, Any]:
        return h.feedback(request, body)

    app.post("/v1/feedback", summary="Rate an answer, or say which of two was better", **authed)(feedback)
    paths.update(route.path for route in app.routes if not isinstance(route, Mount))
    return app

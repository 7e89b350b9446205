"""The annotation app: people sign in with their token, compare two answers to a prompt side by side and
vote (A, B or tie, with an optional reason); a JSON API (documented at /docs) serves scripts and tools.

    app = create_app(store, cfg.annotate, on_complete=resume_flow)   # on_complete(summary), in a thread
    run_server(app, cfg.annotate.host, cfg.annotate.port)            # `lifecycle annotate` does both

Pages: /login, / (annotate), /summary, /docs. API: /api/next, /api/votes, /api/batches[/{id}/summary|
/plot.png], /openapi.json. Everything but /login, /static/, /healthz and the API reference (/docs,
/openapi.json) needs a sign-in: browsers hold a
session cookie (and send a CSRF token with every POST), API clients send `Authorization: Bearer <token>`.
Each token or session may make annotate.rate_limit_per_minute requests (bursts of rate_limit_burst), sign-in
attempts as many per client address; beyond that: 429 with Retry-After.
When a new vote fills the last item of a batch, a thread closes the batch if its agreement threshold is met
(complete_if_ready) and hands the summary to `on_complete`, once.

On SQLite the two hot endpoints (/api/next, /api/votes) run their store calls on the event loop: each is a
fraction of a millisecond and writes are serialised anyway, while a trip to the threadpool plus the GIL
hand-offs between threads cost more than the work (bench/annotate.py, 2 cores: ~150 -> ~290 votes/s).
Everything slower (pages, statistics, plots) runs in the threadpool, as do all calls on other databases.
Security plumbing: web.py; JSON shapes: api.py.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import and_, bindparam, func, select
from starlette.concurrency import run_in_threadpool

from lifecycle.config.preferences import AnnotateConfig
from lifecycle.errors import LifecycleError
from lifecycle.preferences import api
from lifecycle.preferences.assign import PEOPLE, VoteRefused, next_item, submit_vote
from lifecycle.preferences.schema import Assignment, Batch, Item, Vote
from lifecycle.preferences.stats import batch_stats, plot_stats
from lifecycle.preferences.store import PreferenceStore, hash_token
from lifecycle.preferences.summary import batch_summary, complete_if_ready
from lifecycle.preferences.web import Creds, Guard, SignInFirst, Who, api_creds, credentials, page_creds, rate_key
from lifecycle.web_security import (SESSION_COOKIE, SESSION_MAX_AGE_S, BodyLimit, RateLimit, RateLimiter,
                                    SecurityHeaders, Signer)

log = logging.getLogger("lifecycle.preferences.app")
HERE = Path(__file__).parent
# run on every vote / every item shown: built once, values bound per call
_ITEM_FILL = (select(Item.batch_id, Item.gold, Batch.votes_per_item,
                     select(func.count()).where(Vote.item_id == Item.id).scalar_subquery().label("votes"))
              .join(Batch, Batch.id == Item.batch_id).where(Item.id == bindparam("item")))
_MY_VOTES = (select(func.count()).select_from(Assignment)  # through the annotator's assignments: indexed
             .join(Vote, and_(Vote.item_id == Assignment.item_id, Vote.annotator_id == Assignment.annotator_id))
             .where(Assignment.annotator_id == bindparam("id")))


class Handlers:
    """The app's request handlers over one store and config; `create_app` routes requests to them."""

    def __init__(self, store: PreferenceStore, cfg: AnnotateConfig, guard: Guard, pages: Jinja2Templates,
                 on_complete: Callable[[dict[str, Any]], None] | None) -> None:
        self.store, self.cfg, self.guard, self.pages, self.on_complete = store, cfg, guard, pages, on_complete

    # pages
    def login_page(self, request: Request) -> Response:
        return self.pages.TemplateResponse(request, "login.html", {"error": None})

    async def login(self, request: Request) -> Response:
        self.guard.origin(request)
        token = _form(await request.body()).get("token", "").strip()
        found = await run_in_threadpool(self.store.authenticate, token)
        if found is None:
            return self.pages.TemplateResponse(request, "login.html", {"error": "Unknown or revoked token."}, 401)
        log.info("%s signed in", found[1])
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, self.guard.signer.session(found[0], hash_token(token)),
                            max_age=SESSION_MAX_AGE_S, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request, creds: Creds = Depends(credentials)) -> Response:
        self.guard.origin(request)
        self.guard.csrf(creds, request.headers.get("x-csrf-token") or _form(await request.body()).get("csrf"))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def annotate_page(self, request: Request, creds: Creds = Depends(page_creds)) -> Response:
        who = self.guard.page(creds)
        return self.pages.TemplateResponse(request, "annotate.html", {
            "name": who.name, "csrf": self._csrf(who), "max_reason": self.cfg.max_reason_chars})

    def summary_page(self, request: Request, batch: str | None = None,
                     creds: Creds = Depends(page_creds)) -> Response:
        who = self.guard.page(creds)
        batches = [b.id for b in reversed(self.store.batches())]  # newest first
        chosen = batch if batch in batches else batches[0] if batches else None
        return self.pages.TemplateResponse(request, "summary.html", {
            "name": who.name, "csrf": self._csrf(who), "batches": batches,
            "summary": batch_summary(self.store, chosen) if chosen else None})

    def docs(self, request: Request) -> Response:
        """The API reference, rendered here from the OpenAPI document (no CDN: it works offline)."""
        return self.pages.TemplateResponse(request, "docs.html", api.reference(request.app.openapi()))

    def openapi(self, request: Request) -> dict[str, Any]:
        return request.app.openapi()

    def _csrf(self, who: Who) -> str:
        return self.guard.signer.csrf(who.cookie) if who.cookie else ""

    # API
    def next(self, creds: Creds) -> Response:
        who = self.guard.api(creds)
        shown = next_item(self.store, who.id, self.cfg.assignment_ttl_s, self.cfg.gold_every)
        item = api.item_out(shown) if shown else None
        return api.json_response(api.NextOut(item=item, progress=self.progress(who, shown.batch_id if shown else None)))

    def vote(self, request: Request, vote: api.VoteBase, creds: Creds) -> Response:
        self.guard.origin(request)
        self.guard.csrf(creds, request.headers.get("x-csrf-token"))
        who = self.guard.api(creds)
        vote_id = vote.vote_id.lower()
        try:
            status = submit_vote(self.store, vote_id, who.id, vote.item_id, vote.choice, vote.reason)
        except VoteRefused as err:
            raise HTTPException(err.status, str(err)) from None
        if status == "created":
            self.after_vote(vote.item_id)
        return api.json_response(api.VoteOut(status=status, vote_id=vote_id, item_id=vote.item_id))

    def batches(self, creds: Creds = Depends(api_creds)) -> list[api.BatchOut]:
        self.guard.api(creds)
        return [api.batch_out(b, self.store.progress(b.id)) for b in self.store.batches()]

    def summary(self, batch_id: str, creds: Creds = Depends(api_creds)) -> dict[str, Any]:
        self.guard.api(creds)
        try:
            return batch_summary(self.store, batch_id)
        except LifecycleError as err:
            raise HTTPException(404, str(err)) from None

    def plot(self, batch_id: str, creds: Creds = Depends(api_creds)) -> Response:
        self.guard.api(creds)
        if self.store.batch(batch_id) is None:
            raise HTTPException(404, f"no preference batch {batch_id!r}")
        with tempfile.TemporaryDirectory(prefix="annotate-plot-") as tmp:
            png = plot_stats(batch_stats(self.store.judgements(batch_id)), Path(tmp) / "stats.png").read_bytes()
        return Response(png, media_type="image/png")

    def progress(self, who: Who, batch_id: str | None) -> api.ProgressOut:
        with self.store.engine.connect() as c:
            mine = c.scalar(_MY_VOTES, {"id": who.id}) or 0
        if batch_id is None:  # nothing to show: the newest open batch, if any
            batch_id = next((b.id for b in reversed(self.store.batches())
                             if b.status == "open" and b.source in PEOPLE), None)
        if batch_id is None:
            return api.ProgressOut(your_votes=mine)
        p = self.store.progress(batch_id)
        return api.ProgressOut(your_votes=mine, batch_id=batch_id, status=p.status, items=p.items,
                               items_left=p.items - p.complete_items, votes=p.votes, quota=p.quota)

    def after_vote(self, item_id: str) -> None:
        """Only a vote that filled its item can be a batch's last: then close it, in a thread (statistics)."""
        with self.store.engine.connect() as c:
            row = c.execute(_ITEM_FILL, {"item": item_id}).first()
        if row is None or row.gold is not None or row.votes < row.votes_per_item:
            return
        if self.store.progress(row.batch_id).done:
            threading.Thread(target=self.complete, args=(row.batch_id,), name="annotate-complete").start()

    def complete(self, batch_id: str) -> None:
        try:
            summary = complete_if_ready(self.store, batch_id)  # closes it once, however many threads ask
            if summary is None:
                return
            log.info("batch %s complete: %s votes, agreement %s", batch_id, summary["votes"], summary["agreement"])
            if self.on_complete is not None:
                self.on_complete(summary)
        except Exception:  # noqa: BLE001 - the votes are stored either way; the flow can be resumed by hand
            log.exception("completing batch %s failed", batch_id)


def create_app(store: PreferenceStore, cfg: AnnotateConfig,
               on_complete: Callable[[dict[str, Any]], None] | None = None) -> FastAPI:
    """The annotation app over `store`; `on_complete(summary)` runs in a thread when a batch is complete."""
    app = FastAPI(title="llm-lifecycle annotation", version="1", description=api.DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url=None)  # served below, without a CDN
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(RateLimit, limiter=RateLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst),
                       key=rate_key, problem=lambda message: {"detail": message})  # before any body is read
    app.add_middleware(SecurityHeaders)  # added last, so outermost: on every answer, a 413 or 429 included
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["num"], env.filters["percent"] = api.number, api.percent
    guard = Guard(store, Signer(store.secret("session"), store.secret("csrf")), cfg.public_url)
    h = Handlers(store, cfg, guard, Jinja2Templates(env=env), on_complete)
    inline = store.engine.dialect.name == "sqlite"  # see the module docstring

    async def hot(fn: Callable[..., Response], *args: Any) -> Response:
        return fn(*args) if inline else await run_in_threadpool(fn, *args)

    async def get_next(creds: Creds = Depends(api_creds)) -> Response:
        return await hot(h.next, creds)

    async def post_vote(request: Request, vote: api.VoteBase, creds: Creds = Depends(api_creds)) -> Response:
        return await hot(h.vote, request, vote, creds)

    post_vote.__annotations__["vote"] = api.vote_model(cfg.max_reason_chars)  # the reason limit is configured
    app.add_exception_handler(SignInFirst, _to_login)  # type: ignore[arg-type]
    page: dict[str, Any] = {"include_in_schema": False, "response_class": HTMLResponse}
    app.get("/healthz", tags=["meta"], response_model=api.Health, summary="Liveness (no sign-in)")(_healthz)
    app.get("/docs", **page)(h.docs)
    app.get("/openapi.json", include_in_schema=False)(h.openapi)
    app.get("/login", **page)(h.login_page)
    app.post("/login", include_in_schema=False)(h.login)
    app.post("/logout", include_in_schema=False)(h.logout)
    app.get("/", **page)(h.annotate_page)
    app.get("/summary", **page)(h.summary_page)
    app.get("/api/next", tags=["annotate"], response_model=api.NextOut, responses=api.ERRORS,
            summary="The item to judge next (the same one until you vote on it), and progress")(get_next)
    app.post("/api/votes", tags=["annotate"], response_model=api.VoteOut, responses=api.VOTE_ERRORS,
             summary="Vote on the item you were shown; a repeated vote_id is acknowledged, not counted twice",
             )(post_vote)
    app.get("/api/batches", tags=["batches"], response_model=list[api.BatchOut], responses=api.ERRORS,
            summary="Every batch with its progress, oldest first")(h.batches)
    app.get("/api/batches/{batch_id:path}/summary", tags=["batches"], response_model=api.SummaryOut,
            responses=api.ERRORS, summary="A batch's progress and quality statistics")(h.summary)
    app.get("/api/batches/{batch_id:path}/plot.png", tags=["batches"], response_class=Response, responses={
        **api.ERRORS, 200: {"content": {"image/png": {}}, "description": "agreement, bias, gold accuracy"}},
        summary="A PNG of the batch's statistics")(h.plot)
    return app


def _healthz() -> api.Health:
    return api.Health(status="ok")


async def _to_login(_request: Request, _exc: SignInFirst) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _form(body: bytes) -> dict[str, str]:
    """An urlencoded form's first value per field (python-multipart is not a dependency)."""
    try:
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=16).items()}
    except ValueError:  # more fields than any of our forms has
        raise HTTPException(400, "too many form fields") from None


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until SIGINT/SIGTERM; open requests get a few seconds to finish."""
    config = uvicorn.Config(app, host=host, port=port, access_log=False, server_header=False,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()

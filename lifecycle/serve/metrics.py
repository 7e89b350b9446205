"""The serving app's operational metrics, in Prometheus' text format at GET /metrics (prometheus-client), for
Prometheus to scrape and Grafana to chart (infra/compose.yaml, infra/grafana/):

- `lifecycle_serve_requests_total{route, method, status}` and `lifecycle_serve_request_duration_seconds{route}`
  (a histogram): every HTTP request, counted at the outermost layer so 401s, 413s and 429s are in it; `route`
  is the route's template (`/v1/chat/completions`), "static" for files, "unmatched" for paths no route has
  (bounded label values, whatever the paths asked for);
- `lifecycle_serve_completions_total{version, alias, outcome}` (outcome: stop | length | error): chat answers
  per model version that gave them, alias champion / challenger / pinned;
- `lifecycle_serve_time_to_first_token_seconds{version}` (measured where the tokens are read: streamed or
  not, the time from the start of generation to the first token) and
  `lifecycle_serve_generation_seconds{version}` (histograms); `lifecycle_serve_generated_tokens_total{version}`
  (tokens/s: its rate over the rate of generation_seconds_sum);
- `lifecycle_serve_feedback_total{version, kind, value}`: thumbs (kind rating, value up | down) and side-by-side
  comparisons (kind compare, value won | lost | tie) recorded for the version that answered;
- `lifecycle_serve_model_events_total{slot, event}` (event load | drop | reload_failed) and
  `lifecycle_serve_model_info{slot, alias, version}` (1 for each version served now, read at scrape time).

`live()` is the same tally per version for /health: answers, thumbs up share and compare-mode win rate (ties
count half), each with a 95% Wilson interval and its n, since the app started.

Each app has its registry of its own (several apps can run in one process, as in the tests). With an API key
configured, /metrics asks for it as /v1/* does (Prometheus: `authorization: {credentials_file: ...}`).

    metrics = ServeMetrics(models)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)   # the outermost: added last
    metrics.answered(served, stream)                         # after each completion
    metrics.render()                                         # (body, content type) for GET /metrics
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.evaluate.bootstrap import wilson
from lifecycle.serve.generation import TextStream
from lifecycle.serve.models import Served, ServedModels

PREFIX = "lifecycle_serve"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _ServedNow(Collector):
    """`lifecycle_serve_model_info`: what is served at the moment of the scrape."""

    def __init__(self, models: ServedModels) -> None:
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(f"{PREFIX}_model_info", "1 for each model version served now",
                                   labels=["slot", "alias", "version"])
        for slot, served in sorted(self.models.all().items()):
            family.add_metric([slot, served.served_as, str(served.ref)], 1)
        yield family


class ServeMetrics:
    def __init__(self, models: ServedModels) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.request_seconds = Histogram(f"{PREFIX}_request_duration_seconds", "HTTP request duration (to the "
                                         "end of the response body)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.completions = Counter(f"{PREFIX}_completions", "chat completions by the version that answered",
                                   ["version", "alias", "outcome"], registry=r)
        self.first_token = Histogram(f"{PREFIX}_time_to_first_token_seconds", "from the start of generation to "
                                     "the first generated token", ["version"], buckets=LATENCY_BUCKETS, registry=r)
        self.generation = Histogram(f"{PREFIX}_generation_seconds", "generation time of an answer", ["version"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(f"{PREFIX}_generated_tokens", "tokens generated", ["version"], registry=r)
        self.feedback = Counter(f"{PREFIX}_feedback", "feedback recorded for the version that answered",
                                ["version", "kind", "value"], registry=r)
        self.model_events = Counter(f"{PREFIX}_model_events", "served models loaded, dropped, or failing to reload",
                                    ["slot", "event"], registry=r)
        r.register(_ServedNow(models))
        self._live: defaultdict[str, Tally[str]] = defaultdict(Tally)  # version -> answers, up, down, won, lost, tie
        self._lock = threading.Lock()

    def _count(self, version: str, what: str) -> None:
        with self._lock:
            self._live[version][what] += 1

    def live(self) -> dict[str, Any]:
        """Per version since the app started: answers, thumbs up share and compare win rate with 95% intervals."""
        with self._lock:
            found = {v: Tally(t) for v, t in self._live.items()}
        return {version: {"answers": t["answers"],
                          "thumbs_up": wilson(t["up"], t["up"] + t["down"]),
                          "compare_wins": wilson(t["won"] + t["tie"] / 2, t["won"] + t["lost"] + t["tie"])}
                for version, t in sorted(found.items())}

    def answered(self, served: Served, stream: TextStream, failed: bool) -> None:
        version = str(served.ref)
        outcome = "error" if failed else stream.finish_reason
        self.completions.labels(version, served.served_as, outcome).inc()
        self._count(version, "answers")
        if stream.first_token_seconds is not None:
            self.first_token.labels(version).observe(stream.first_token_seconds)
        self.generation.labels(version).observe(stream.seconds)
        self.tokens.labels(version).inc(stream.tokens)

    def rated(self, version: str, score: int) -> None:
        value = "up" if score > 0 else "down"
        self.feedback.labels(version, "rating", value).inc()
        self._count(version, value)

    def compared(self, version: str, result: str) -> None:
        self.feedback.labels(version, "compare", result).inc()
        self._count(version, result)

    def model_event(self, slot: str, event: str) -> None:
        self.model_events.labels(slot, event).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware: count each HTTP request by route, method and status, and time it to the end of its
    body (a streamed answer included). `paths`: the app's route paths (none has parameters), filled once its
    routes are declared; a request is labelled with its path if it is one of them, "static" under /static/,
    else "unmatched", so the label's values stay few whatever paths are asked for. Requests refused before
    routing (401, 413, 429) are labelled with their route all the same."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    def route(self, path: str) -> str:
        if path in self.paths:
            return path
        return "static" if path.startswith("/static/") else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = self.route(scope.get("path", ""))
            self.metrics.requests.labels(route, scope.get("method", ""), str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)

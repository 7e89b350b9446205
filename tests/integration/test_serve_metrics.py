"""The serving app's /metrics (lifecycle/serve/metrics.py) under real traffic, and a real Prometheus (Debian's
`prometheus`, installed by .ci/run) scraping it on loopback with the API key, as infra/compose.yaml runs it;
then every panel query of the Grafana dashboard (infra/grafana/dashboards/serving.json) against that
Prometheus, each returning data (Grafana itself cannot run here)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lifecycle.registry import CHAMPION, set_alias
from lifecycle.serve.app import create_app
from tests.annotate_fixtures import free_port, serving
from tests.process_fixtures import wait_until_answers
from tests.serve_fixtures import NAME, ServeState, make_serve_state, serve_config

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "serving.json"
KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "How do I deserialize a JSON document?"}]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> ServeState:
    return make_serve_state(tmp_path_factory.mktemp("serve-metrics"))


@pytest.fixture(scope="module")
def base(state: ServeState) -> Iterator[str]:
    # a burst of 30, then one request per 10 s: the wrong key's 35 are refused from the 31st even on a slow machine,
    # and the right key's dozen never reach the limit
    cfg = serve_config("serve.server.rate_limit_burst=30", "serve.server.rate_limit_per_minute=6")
    app = create_app(state.models(cfg), cfg, state.store(), state.experiment_id, api_key=KEY)
    with serving(app) as url:
        yield url


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the app's /metrics."""
    text = httpx.get(f"{base}/metrics", headers=AUTH).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(base: str, model: str, stream: bool = False) -> str:
    """A completion's id (a streamed one's from its first event)."""
    body = {"model": model, "messages": USER, "stream": stream}
    if not stream:
        reply = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["id"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data: {")]
    return json.loads(events[0].removeprefix("data: "))["id"]


def traffic(base: str) -> None:
    """Answers from both versions (plain and streamed), a rating each way and a comparison."""
    champion, challenger = chat(base, NAME), chat(base, f"{NAME}@challenger", stream=True)
    chat(base, NAME, stream=True)
    for cid, score in ((champion, 1), (challenger, -1)):
        rating = {"kind": "rating", "feedback_id": str(uuid.uuid4()), "completion_id": cid, "score": score}
        assert httpx.post(f"{base}/v1/feedback", json=rating, headers=AUTH).status_code == 200
    compare = {"kind": "compare", "feedback_id": str(uuid.uuid4()), "left": champion, "right": challenger,
               "choice": "right"}
    assert httpx.post(f"{base}/v1/feedback", json=compare, headers=AUTH).status_code == 200


def test_metrics_count_requests_answers_feedback_and_model_loads(base: str, state: ServeState) -> None:
    before = samples(base)
    assert httpx.get(f"{base}/metrics").status_code == 401  # the key /v1/* asks for
    traffic(base)
    assert httpx.get(f"{base}/no/such/page/{uuid.uuid4()}").status_code == 404
    hammer = [httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code
              for _ in range(35)]
    assert hammer[:30] == [401] * 30 and hammer[-1] == 429  # the wrong key's burst, then refused before auth
    set_alias(state.challenger, CHAMPION)  # a promotion: the served champion is swapped without a restart
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health").json()["served"]["champion"]["version"] != "2":
            assert time.monotonic() < deadline, "the alias move was not followed"
            time.sleep(0.1)
    finally:
        set_alias(state.champion, CHAMPION)
    deadline = time.monotonic() + 30
    while value(after := samples(base), "lifecycle_serve_model_info", slot="challenger", alias="challenger",
                version=f"{NAME}/2") != 1:
        assert time.monotonic() < deadline, "the challenger was not served again"
        time.sleep(0.1)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    one, two = f"{NAME}/1", f"{NAME}/2"
    route = "/v1/chat/completions"
    assert grew("lifecycle_serve_requests_total", route=route, method="POST", status="200") == 3
    assert grew("lifecycle_serve_requests_total", route="/v1/feedback", method="POST", status="200") == 3
    assert grew("lifecycle_serve_requests_total", route="/v1/models", method="GET", status="401") == hammer.count(401)
    assert grew("lifecycle_serve_requests_total", route="/v1/models", method="GET", status="429") == hammer.count(429)
    assert grew("lifecycle_serve_requests_total", route="/metrics", method="GET", status="401") == 1
    assert grew("lifecycle_serve_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("lifecycle_serve_request_duration_seconds_count", route=route) == 3
    # answers by the version that gave them, streamed or not
    assert grew("lifecycle_serve_completions_total", version=one, alias="champion", outcome="length") + grew(
        "lifecycle_serve_completions_total", version=one, alias="champion", outcome="stop") == 2
    assert sum(grew("lifecycle_serve_completions_total", version=two, alias="challenger", outcome=o)
               for o in ("stop", "length")) == 1
    assert grew("lifecycle_serve_time_to_first_token_seconds_count", version=one) == 2
    assert grew("lifecycle_serve_generation_seconds_count", version=two) == 1
    assert grew("lifecycle_serve_generated_tokens_total", version=one) >= 2
    assert 0 < value(after, "lifecycle_serve_time_to_first_token_seconds_sum", version=one) <= value(
        after, "lifecycle_serve_generation_seconds_sum", version=one)
    # feedback for the version it was about
    assert grew("lifecycle_serve_feedback_total", version=one, kind="rating", value="up") == 1
    assert grew("lifecycle_serve_feedback_total", version=two, kind="rating", value="down") == 1
    assert grew("lifecycle_serve_feedback_total", version=two, kind="compare", value="won") == 1
    assert grew("lifecycle_serve_feedback_total", version=one, kind="compare", value="lost") == 1
    # the swap and the way back: the champion loaded twice, the challenger dropped and loaded again
    assert grew("lifecycle_serve_model_events_total", slot="primary", event="load") == 2
    assert grew("lifecycle_serve_model_events_total", slot="challenger", event="drop") == 1
    assert grew("lifecycle_serve_model_events_total", slot="challenger", event="load") == 1
    assert value(after, "lifecycle_serve_model_info", slot="primary", alias="champion", version=one) == 1


@pytest.fixture(scope="module")
def prometheus(base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus scraping the app every second, with the API key from a file (as in compose)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Prometheus (Debian's `prometheus` package; .ci/run installs it)")
    home = tmp_path_factory.mktemp("prometheus")
    (home / "key").write_text(KEY)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "lifecycle-serve", "metrics_path": "/metrics",
                                  "authorization": {"type": "Bearer", "credentials_file": str(home / "key")},
                                  "static_configs": [{"targets": [base.removeprefix("http://")]}]}]}
    (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    url = f"http://127.0.0.1:{free_port()}"
    log = open(home / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
                             f"--web.listen-address={url.removeprefix('http://')}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until_answers(f"{url}/-/ready", proc, home / "prometheus.log", timeout_s=60)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def query(prometheus: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert reply["status"] == "success", (promql, reply)
    return reply["data"]["result"]


def wait_for(prometheus: str, promql: str, check: object, what: str) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = query(prometheus, promql)
        if check(found):  # type: ignore[operator]
            return found
        time.sleep(0.5)
    raise AssertionError(f"Prometheus: {what} not seen in 60 s: {promql} -> {found}")


def test_prometheus_scrapes_the_counts_and_every_dashboard_panel_has_data(base: str, prometheus: str) -> None:
    expected = samples(base)
    answered = value(expected, "lifecycle_serve_requests_total", route="/v1/chat/completions", method="POST",
                     status="200")
    promql = 'sum(lifecycle_serve_requests_total{route="/v1/chat/completions",status="200"})'
    wait_for(prometheus, promql, lambda r: r and float(r[0]["value"][1]) == answered, f"{answered:g} answers")
    assert query(prometheus, 'up{job="lifecycle-serve"}')[0]["value"][1] == "1"  # scraped with the key
    traffic(base)  # between scrapes: the rates and quantiles have something to measure
    wait_for(prometheus, promql, lambda r: r and float(r[0]["value"][1]) == answered + 3, "the new answers")
    time.sleep(2.5)  # two more scrapes
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found = query(prometheus, target["expr"])
            assert any(math.isfinite(float(r["value"][1])) for r in found), \
                f"panel {panel['title']!r}: {target['expr']} returned no number: {found}"

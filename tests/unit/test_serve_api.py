"""The serving API with the `openai` client against a real uvicorn server: a tiny chat model registered as
@champion (and another as @challenger) with its paired tiny RAG index. Answers come in OpenAI's shape with
their sources, a stream assembles to the greedy answer, errors come in OpenAI's error shape, the API key is
enforced when set, each completion is an MLflow trace with retrieve and generate spans, a moved alias is
served without a restart, and feedback (ratings, comparisons) reaches the preference store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import openai
import pytest

from lifecycle.preferences.feedback import feedback_digest, feedback_rows
from lifecycle.registry import CHAMPION, set_alias
from lifecycle.serve.app import create_app
from tests.annotate_fixtures import serving
from tests.serve_fixtures import NAME, ServeState, make_serve_state, serve_config

QUESTION = "How do I deserialize a JSON document?"
USER = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> ServeState:
    return make_serve_state(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def base(state: ServeState) -> Iterator[str]:
    cfg = serve_config()
    app = create_app(state.models(cfg), cfg, state.store(), state.experiment_id)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_an_answer_comes_in_the_openai_shape_with_its_sources(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=NAME, messages=USER)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == f"{NAME}/1"  # the version that answered
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == (reply.usage.prompt_tokens
                                                                          + reply.usage.completion_tokens)
    sources = reply.model_extra["sources"]
    assert sources[0]["title"] == "json.loads" and {"title", "path", "source", "chunk_id", "score"} <= set(sources[0])
    assert reply.model_extra["trace_id"].startswith("tr-")
    again = client.chat.completions.create(model=f"{NAME}@champion", messages=USER)
    assert again.choices[0].message.content == choice.message.content  # greedy
    other = client.chat.completions.create(model=f"{NAME}@challenger", messages=USER)
    assert other.model == f"{NAME}/2" and other.choices[0].message.content != choice.message.content
    sampled = client.chat.completions.create(model=NAME, messages=USER, temperature=1.0, top_p=0.9, seed=3)
    assert sampled.choices[0].message.content == client.chat.completions.create(
        model=NAME, messages=USER, temperature=1.0, top_p=0.9, seed=3).choices[0].message.content  # seeded


def test_a_stream_assembles_to_the_greedy_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=NAME, messages=USER, max_tokens=10)
    chunks = list(client.chat.completions.create(model=NAME, messages=USER, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["sources"] == plain.model_extra["sources"]
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed, piece by piece
    assert "".join(pieces) == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_models_and_health(client: openai.OpenAI, base: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == NAME and {f"{NAME}@champion", f"{NAME}/1", f"{NAME}@challenger", f"{NAME}/2"} <= set(ids)
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok" and health["served"]["champion"]["version"] == "1"
    assert health["served"]["challenger"]["version"] == "2"
    assert health["served"]["champion"]["rag_index"]["table"] == "docs"
    assert health["served"]["champion"]["loaded_at"].endswith("Z") and health["tracing"] and health["feedback"]


def _error(base: str, body: object, status: int, **kwargs: object) -> dict:
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_bad_requests_are_refused_in_the_openai_error_shape(client: openai.OpenAI, base: str) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="other-model", messages=USER)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{NAME}/9", messages=USER)
    assert "empty" in _error(base, {"model": NAME, "messages": []}, 400)["message"]
    assert _error(base, {"messages": [{"role": "system", "content": "Be brief."}]}, 400)["param"] == "messages"
    long = _error(base, {"messages": [{"role": "user", "content": "x" * 301}]}, 400)
    assert "301 characters" in long["message"] and long["code"] == "prompt_too_long"
    too_many = _error(base, {"messages": USER, "max_tokens": 10_000}, 400)
    assert too_many["param"] == "max_tokens" and "context tokens" in too_many["message"]
    assert _error(base, {"messages": USER, "temperature": 9}, 400)["param"] == "temperature"
    assert "4096 bytes" in _error(base, {"messages": [{"role": "user", "content": "y" * 5000}]}, 413)["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}}]}])
    refused = _error(base, {"messages": USER}, 403, headers={"Origin": "http://evil.example"})
    assert "cross-origin" in refused["message"]


def test_an_api_key_is_required_when_configured(state: ServeState) -> None:
    cfg = serve_config()
    app = create_app(state.models(cfg), cfg, None, None, api_key="s3cret-key", reload=False)
    with serving(app) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{url}/v1/models").status_code == 401
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret-key", max_retries=0)
        assert good.chat.completions.create(model=NAME, messages=USER).choices[0].message.content
        assert httpx.get(f"{url}/health").json()["auth"] is True  # health and the page stay public
        assert 'data-needs-key="true"' in httpx.get(f"{url}/").text
        feedback = httpx.post(f"{url}/v1/feedback", headers={"Authorization": "Bearer s3cret-key"}, json={
            "kind": "rating", "feedback_id": str(uuid.uuid4()), "completion_id": "chatcmpl-x", "score": 1})
        assert feedback.status_code == 503  # no preference store given to this app


@pytest.mark.parametrize("api_key", [None, "s3cret-key"])
def test_over_its_rate_a_client_gets_429_rate_limit_exceeded(state: ServeState, api_key: str | None) -> None:
    cfg = serve_config("serve.server.rate_limit_per_minute=20", "serve.server.rate_limit_burst=2")
    app = create_app(state.models(cfg), cfg, None, None, api_key=api_key, reload=False)
    with serving(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "unused", max_retries=0)
        assert client.models.list().data and client.models.list().data  # the burst
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=NAME, messages=USER)
        assert refused.value.code == "rate_limit_exceeded" and "too many requests" in refused.value.message
        assert refused.value.body["type"] == "requests"
        retry_after = int(refused.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 3  # one request every 3 s
        for path in ("/health", "/", "/static/chat.js"):  # never limited
            assert [httpx.get(f"{url}{path}").status_code for _ in range(4)] == [200] * 4, path
        # another credential: without a key the client address (as forwarded by a trusted local proxy)
        other = {"Authorization": "Bearer another-key"} if api_key else {"X-Forwarded-For": "192.0.2.7"}
        assert httpx.get(f"{url}/v1/models", headers=other).status_code == (401 if api_key else 200)
        time.sleep(retry_after)
        assert client.chat.completions.create(model=NAME, messages=USER).choices[0].message.content  # refilled


def test_each_completion_is_a_trace_with_retrieve_and_generate_spans(client: openai.OpenAI,
                                                                      state: ServeState) -> None:
    reply = client.chat.completions.create(model=NAME, messages=USER)
    trace_id = reply.model_extra["trace_id"]
    traces = mlflow.search_traces(locations=[state.experiment_id], return_type="list", flush=True)
    trace = next(t for t in traces if t.info.trace_id == trace_id)
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"chat.completions", "retrieve", "generate"}
    retrieve, generate = spans["retrieve"], spans["generate"]
    assert retrieve.parent_id == spans["chat.completions"].span_id == generate.parent_id
    assert retrieve.inputs == {"query": QUESTION, "k": 3}
    assert retrieve.outputs[0]["metadata"]["title"] == "json.loads" and retrieve.outputs[0]["id"]
    assert generate.inputs["prompt_tokens"] == reply.usage.prompt_tokens
    assert generate.outputs["answer"] == reply.choices[0].message.content
    assert generate.outputs["tokens"] == reply.usage.completion_tokens and generate.outputs["tokens_per_s"] > 0
    assert generate.end_time_ns > generate.start_time_ns > retrieve.end_time_ns
    assert trace.info.tags["lifecycle.model"] == f"{NAME}/1"


def test_feedback_reaches_the_preference_store(client: openai.OpenAI, base: str, state: ServeState) -> None:
    store = state.store()
    before = feedback_digest(store)
    champion = client.chat.completions.create(model=f"{NAME}@champion", messages=USER)
    challenger = client.chat.completions.create(model=f"{NAME}@challenger", messages=USER)
    fid = str(uuid.uuid4())
    compare = {"kind": "compare", "feedback_id": fid, "left": challenger.id, "right": champion.id, "choice": "left"}
    assert httpx.post(f"{base}/v1/feedback", json=compare).json()["status"] == "created"
    assert httpx.post(f"{base}/v1/feedback", json=compare).json()["status"] == "replayed"  # a retry counts once
    rows = feedback_rows(store)
    text = {c.id: c.choices[0].message.content for c in (champion, challenger)}
    row = next(r for r in rows if r["chosen"][0]["content"] == text[challenger.id])
    assert row["prompt"] == USER and row["rejected"][0]["content"] == text[champion.id]
    assert row["source"] == "feedback" and row["votes"] == 1
    item = next(i for i in store.items(f"feedback-{NAME}") if i.id == row["item_id"])
    assert store.batch(f"feedback-{NAME}").source == "feedback"
    assert '"origin": "chat"' in item.meta and f'"{NAME}/1", "{NAME}/2"' in item.meta  # a: the champion's
    judgement = store.judgements(f"feedback-{NAME}")[0]
    assert (judgement.annotator, judgement.choice, judgement.left, judgement.synthetic) == ("chat", "b", "b", False)

    for reply, score in ((champion, 1), (challenger, -1)):
        rating = {"kind": "rating", "feedback_id": str(uuid.uuid4()), "completion_id": reply.id, "score": score}
        assert httpx.post(f"{base}/v1/feedback", json=rating).json()["status"] == "created"
    rows = feedback_rows(store)
    assert any(r["chosen"][0]["content"] == text[champion.id] and r["rejected"][0]["content"] == text[challenger.id]
               for r in rows)
    assert feedback_rows(store) == rows and feedback_digest(store) not in (before, "none")
    trace = mlflow.get_trace(champion.model_extra["trace_id"])
    assert {a.name for a in trace.info.assessments} >= {"user_rating", "chat_compare"}
    gone = httpx.post(f"{base}/v1/feedback", json={**rating, "feedback_id": str(uuid.uuid4()),
                                                  "completion_id": "chatcmpl-unknown"})
    assert gone.status_code == 404 and "ask again" in gone.json()["error"]["message"]
    digest = feedback_digest(store)
    for hostile in ("'; DROP TABLE votes; --", "' OR '1'='1"):  # looked up in memory, never in SQL
        refused = httpx.post(f"{base}/v1/feedback", json={**compare, "feedback_id": str(uuid.uuid4()),
                                                          "left": hostile})
        assert refused.status_code == 404 and hostile in refused.json()["error"]["message"]
    assert feedback_digest(store) == digest and feedback_rows(store) == rows
    assert httpx.post(f"{base}/v1/feedback", json={**rating, "score": 5}).status_code == 400


def _wait_for(base: str, check: object, what: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health").json()
        if check(health):  # type: ignore[operator]
            return health
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {health}")


def test_an_alias_move_is_served_without_a_restart(client: openai.OpenAI, base: str, state: ServeState) -> None:
    loaded = httpx.get(f"{base}/health").json()["served"]["champion"]["loaded_at"]
    set_alias(state.challenger, CHAMPION)  # version 2 promoted: it is no longer anyone's challenger
    try:
        health = _wait_for(base, lambda h: h["served"]["champion"]["version"] == "2", "champion -> 2")
        assert "challenger" not in health["served"] and health["served"]["champion"]["loaded_at"] >= loaded
        assert client.chat.completions.create(model=NAME, messages=USER).model == f"{NAME}/2"
    finally:
        set_alias(state.champion, CHAMPION)
    health = _wait_for(base, lambda h: h["served"]["champion"]["version"] == "1" and "challenger" in h["served"],
                       "champion back to 1, challenger 2 again")
    assert health["reload"]["last_error"] is None


def test_no_champion_is_a_clear_error(state: ServeState) -> None:
    from lifecycle.errors import LifecycleError
    from lifecycle.serve.models import ServedModels

    with pytest.raises(LifecycleError, match=r"no chat model 'nobody@champion'.*lifecycle promote.*--model"):
        ServedModels(state.state_dir, "nobody", serve_config()).load()
    pinned = ServedModels(state.state_dir, NAME, serve_config(), primary=f"{NAME}/2")
    pinned.load()
    assert pinned.lookup(None).ref.version == "2" and pinned.lookup(f"{NAME}/2").alias == ""
    with pytest.raises(KeyError):
        pinned.lookup(f"{NAME}@challenger")  # a pinned version is served alone


def test_the_serve_command_without_a_champion_says_how_to_get_one(state: ServeState, tmp_path: Path) -> None:
    import argparse

    from lifecycle.cli import _config_args, load
    from lifecycle.errors import LifecycleError
    from lifecycle.serve.cli import HANDLERS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"), _config_args)
    for state_dir, expected in ((tmp_path / "empty", r"no model registry in .*lifecycle promote"),
                                (state.state_dir, r"'lifecycle-gpt@champion'.*lifecycle promote VERSION.*--model")):
        args = parser.parse_args(["serve", "--state-dir", str(state_dir), "--port", "1"])
        with pytest.raises(LifecycleError, match=expected):
            HANDLERS["serve"](args, load)

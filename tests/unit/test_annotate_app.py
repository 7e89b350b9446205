"""The annotation app: sign-in (token -> signed session cookie, revocation ends it), CSRF and same-origin
checks on cookie POSTs, the bearer-token API, idempotent votes, body limits, validation, escaping, security
headers, the OpenAPI page, the batch-complete callback, and 50 concurrent voters on a real server."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lifecycle.preferences.app import create_app
from lifecycle.preferences.db import default_url, read
from lifecycle.preferences.schema import Vote
from lifecycle.preferences.store import NewBatch, PreferenceStore
from tests.annotate_fixtures import annotate_config, comparison_items, serving

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def store(tmp_path: Path) -> PreferenceStore:
    store = PreferenceStore.open(default_url(tmp_path))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=2), comparison_items(3))
    return store


@pytest.fixture
def client(store: PreferenceStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, annotate_config())) as client:
        yield client


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; the page's CSRF token."""
    answer = client.post("/login", content=f"token={token}", headers=FORM, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text).group(1)


def vote(item_id: str, choice: str = "left", **extra: Any) -> dict[str, Any]:
    return {"vote_id": str(uuid.uuid4()), "item_id": item_id, "choice": choice, **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_signing_in_sets_a_strict_http_only_cookie_and_revocation_ends_it(store, client) -> None:
    token = store.add_annotator("alice")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    refused = client.post("/login", content="token=wrong", headers=FORM, follow_redirects=False)
    assert refused.status_code == 401 and "Unknown or revoked token" in refused.text
    assert "set-cookie" not in refused.headers
    answer = client.post("/login", content=f"token={token}", headers=FORM, follow_redirects=False)
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and token.lower() not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text
    store.revoke_annotator("alice")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/next").status_code == 401


def test_a_forged_or_tampered_session_cookie_is_refused(store, client) -> None:
    sign_in(client, store.add_annotator("alice"))
    bob = store.authenticate(store.add_annotator("bob"))[0]
    real = client.cookies["lifecycle_session"]
    client.cookies.clear()
    assert client.get("/api/next", cookies={"lifecycle_session": real}).status_code == 200
    for forged in (f"{bob}.{real.split('.', 1)[1]}",  # alice's signature on bob's id
                   real[:-1] + ("0" if real[-1] != "0" else "1"), "1.2.3", ""):
        assert client.get("/api/next", cookies={"lifecycle_session": forged}).status_code == 401, forged


def test_signing_out_needs_the_csrf_token(store, client) -> None:
    csrf = sign_in(client, store.add_annotator("alice"))
    assert client.post("/logout", content="csrf=nope", headers=FORM, follow_redirects=False).status_code == 403
    answer = client.post("/logout", content=f"csrf={csrf}", headers=FORM, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code == 303


def test_anonymous_requests_are_refused(client) -> None:
    assert client.post("/api/votes", json=vote("b1-x")).status_code == 401
    assert client.get("/api/next").json() == {"detail": "sign in: a bearer token or a session cookie"}
    assert client.get("/api/batches").status_code == 401
    assert client.get("/api/batches/b1/plot.png").status_code == 401
    assert client.get("/summary", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_cookie_votes_need_the_csrf_token_and_the_same_origin(store, client) -> None:
    csrf = sign_in(client, store.add_annotator("alice"))
    item = client.get("/api/next").json()["item"]["item_id"]
    assert client.post("/api/votes", json=vote(item)).status_code == 403
    assert client.post("/api/votes", json=vote(item), headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    for evil in ({"Origin": "https://evil.example"}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                 {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):
        answer = client.post("/api/votes", json=vote(item), headers={"X-CSRF-Token": csrf, **evil})
        assert answer.status_code == 403 and "cross-origin" in answer.json()["detail"], evil
    assert store.progress("b1").votes == 0
    # what browsers send from this page under Referrer-Policy: no-referrer
    same = {"X-CSRF-Token": csrf, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
    ok = client.post("/api/votes", json=vote(item), headers=same)
    assert ok.status_code == 200 and ok.json()["status"] == "created"
    item = client.get("/api/next").json()["item"]["item_id"]
    ok = client.post("/api/votes", json=vote(item), headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert ok.status_code == 200


def test_bearer_api_flow_and_a_replayed_vote_counts_once(store, client) -> None:
    headers = bearer(store.add_annotator("bot"))
    shown = client.get("/api/next", headers=headers).json()
    item = shown["item"]
    assert [m["role"] for m in item["prompt"]] == ["system", "user"] and {item["left"], item["right"]} == {
        "answer 0, the short one", "answer 0, the much longer one"}
    assert shown["progress"] == {"your_votes": 0, "batch_id": "b1", "status": "open", "items": 3, "items_left": 3,
                                 "votes": 0, "quota": 6}
    assert client.get("/api/next", headers=headers).json()["item"] == item  # the same until voted on
    body = vote(item["item_id"], "tie", reason="both fine")
    first = client.post("/api/votes", json=body, headers=headers)
    again = client.post("/api/votes", json=body, headers=headers)
    assert (first.json()["status"], again.json()["status"]) == ("created", "replayed")
    other = client.post("/api/votes", json=vote(item["item_id"]), headers=headers)
    assert other.status_code == 409 and "already voted" in other.json()["detail"]
    after = client.get("/api/next", headers=headers).json()
    assert after["item"]["item_id"] != item["item_id"]
    assert (after["progress"]["your_votes"], after["progress"]["votes"]) == (1, 1)
    assert [(j.choice, j.annotator) for j in store.judgements("b1")] == [("tie", "bot")]
    batches = client.get("/api/batches", headers=headers).json()
    assert [(b["id"], b["votes"], b["quota"]) for b in batches] == [("b1", 1, 6)]


def test_oversized_bodies_are_refused_by_length_and_while_streaming(store, client) -> None:
    headers = bearer(store.add_annotator("bot"))
    item = client.get("/api/next", headers=headers).json()["item"]["item_id"]
    big = b'{"vote_id": "' + b"x" * 5000 + b'"}'
    refused = client.post("/api/votes", content=big, headers=headers)
    assert refused.status_code == 413 and refused.headers["x-frame-options"] == "DENY"

    def chunks() -> Iterator[bytes]:
        yield b'{"reason": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    streamed = client.post("/api/votes", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and "4096 bytes" in streamed.json()["detail"]
    assert client.post("/login", content=b"token=" + b"z" * 5000, headers=FORM).status_code == 413
    assert client.post("/api/votes", json=vote(item), headers=headers).status_code == 200


@pytest.mark.parametrize("body", [
    {"vote_id": "not-a-uuid", "choice": "left"},
    {"vote_id": "12345678-1234-1234-1234-1234567890", "choice": "left"},  # one digit short
    {"choice": "up"},
    {"choice": "a"},  # canonical names are the store's, not the API's
    {"choice": "left", "reason": "r" * 51},  # max_reason_chars is 50
    {"choice": "left", "extra": 1},
])
def test_invalid_votes_are_unprocessable(store, client, body: dict[str, Any]) -> None:
    headers = bearer(store.add_annotator("bot"))
    item = client.get("/api/next", headers=headers).json()["item"]["item_id"]
    answer = client.post("/api/votes", json={**vote(item), **body}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert store.progress("b1").votes == 0


def test_a_vote_on_another_annotators_item_is_forbidden(store, client) -> None:
    alice, bob = bearer(store.add_annotator("alice")), bearer(store.add_annotator("bob"))
    item = client.get("/api/next", headers=alice).json()["item"]["item_id"]
    answer = client.post("/api/votes", json=vote(item), headers=bob)
    assert answer.status_code == 403 and "not assigned to you" in answer.json()["detail"]


def test_the_summary_page_escapes_names_and_shows_statistics(store, client) -> None:
    name = "<script>alert(1)</script>"
    headers = bearer(store.add_annotator(name))
    item = client.get("/api/next", headers=headers).json()["item"]["item_id"]
    client.post("/api/votes", json=vote(item), headers=headers)
    page = client.get("/summary", headers=headers)
    assert page.status_code == 200
    assert name not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    for label in ("Cohen", "Fleiss", "Krippendorff", "majority agreement", "position bias", "length bias",
                  "gold accuracy", "contradictions", 'src="/api/batches/b1/plot.png"'):
        assert label in page.text
    assert ">n/a<" in page.text and "built-in method" not in page.text  # one vote: agreement is undefined
    assert re.search(r"items voted on / annotators</th><td>1 / 1<", page.text)
    png = client.get("/api/batches/b1/plot.png", headers=headers)
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    summary = client.get("/api/batches/b1/summary", headers=headers).json()
    assert summary["votes"] == 1 and summary["stats"]["contradictions"] == {name: 0}
    assert client.get("/api/batches/nope/summary", headers=headers).status_code == 404


def test_every_response_carries_the_security_headers(store, client) -> None:
    headers = bearer(store.add_annotator("bot"))
    for path in ("/login", "/", "/api/next", "/healthz", "/static/annotate.js", "/nowhere"):
        answer = client.get(path, headers=headers)
        assert "default-src 'self'" in answer.headers["content-security-policy"], path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
    page = client.get("/", headers=headers).text
    assert "<script>" not in page and "style=" not in page  # everything inline would break under the CSP


def test_the_api_is_documented_by_its_openapi_page(store, client) -> None:
    spec = client.get("/openapi.json").json()  # public: the reference holds no data
    post = spec["paths"]["/api/votes"]["post"]
    assert {"401", "403", "409", "413", "422"} <= set(post["responses"])
    body = spec["components"]["schemas"][post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                                         .rsplit("/", 1)[1]]
    assert body["properties"]["vote_id"]["pattern"].startswith("^[0-9a-fA-F]{8}")
    assert body["properties"]["reason"]["anyOf"][0]["maxLength"] == 50
    assert "/api/next" in spec["paths"] and "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "/login" not in spec["paths"] and "/openapi.json" not in spec["paths"]
    docs = client.get("/docs").text  # rendered here from the OpenAPI document: nothing from a CDN
    assert "POST /api/votes" in docs and "GET /api/next" in docs and "vote_id" in docs and "409" in docs
    assert "http" not in docs.split("<main>")[1].split("</main>")[0].replace("/openapi.json", "")


def test_on_complete_is_called_once_when_the_last_vote_arrives(tmp_path: Path) -> None:
    store = PreferenceStore.open(default_url(tmp_path))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=2), comparison_items(2))
    calls: list[dict[str, Any]] = []
    done = threading.Event()
    client = TestClient(create_app(store, annotate_config(), on_complete=lambda s: (calls.append(s), done.set())))
    people = [bearer(store.add_annotator(n)) for n in ("alice", "bob", "carol")]
    for headers in people:
        while (item := client.get("/api/next", headers=headers).json()["item"]) is not None:
            # ties: perfect agreement whatever order the answers were shown in (min_agreement is met)
            assert client.post("/api/votes", json=vote(item["item_id"], "tie"), headers=headers).status_code == 200
    assert done.wait(30)
    time.sleep(0.2)  # a second call would come from the same thread that made the first
    assert len(calls) == 1 and calls[0]["batch_id"] == "b1" and calls[0]["status"] == "complete"
    assert calls[0]["votes"] == 4 and store.progress("b1").status == "complete"


def test_50_concurrent_voters_on_a_real_server_lose_and_double_nothing(tmp_path: Path) -> None:
    """50 clients at once against a real uvicorn server, each vote posted twice (a retry after a lost
    response): every acknowledged vote is stored once, every item gets exactly its votes."""
    store = PreferenceStore.open(default_url(tmp_path))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=3), comparison_items(100))
    tokens = [store.add_annotator(f"person-{i}") for i in range(50)]
    acknowledged: list[str] = []
    answers: list[list[str]] = []
    errors: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(len(tokens))
    with serving(create_app(store, annotate_config())) as base:

        def annotate(token: str) -> None:
            try:
                with httpx.Client(base_url=base, headers=bearer(token), timeout=60) as http:
                    start.wait(60)  # all 50 at once
                    while (item := http.get("/api/next").raise_for_status().json()["item"]) is not None:
                        body = vote(item["item_id"], "right")
                        statuses = [http.post("/api/votes", json=body).raise_for_status().json()["status"]
                                    for _ in range(2)]
                        with lock:
                            answers.append(statuses)
                            acknowledged.append(body["vote_id"])
            except Exception as err:  # noqa: BLE001 - reported by the test thread below
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")

        threads = [threading.Thread(target=annotate, args=(t,), daemon=True) for t in tokens]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "voters still running after 300 s"

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"z" * 1000

        streamed = httpx.post(f"{base}/api/votes", content=chunks(), headers=bearer(tokens[0]))
        assert streamed.status_code == 413  # counted while the real server streams it in
    assert errors == []
    assert len(answers) == 300 and all(a == ["created", "replayed"] for a in answers)
    with read(store.engine) as s:
        stored = s.execute(select(Vote.id, Vote.item_id, Vote.annotator_id)).all()
    assert sorted(v.id for v in stored) == sorted(acknowledged) and len(stored) == 300  # 100 items x 3
    per_item = Counter(v.item_id for v in stored)
    assert len(per_item) == 100 and set(per_item.values()) == {3}
    assert len({(v.item_id, v.annotator_id) for v in stored}) == 300
    assert store.progress("b1").done

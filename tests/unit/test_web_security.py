"""The web surfaces under abuse: per-credential rate limits (token buckets: 429 with Retry-After, other
credentials unaffected, refilled over time) and SQL injection attempts through every place the annotation
app takes text (annotator names, vote reasons, item ids, batch ids, tokens, query parameters), which are
stored or refused literally while the tables and other annotators' votes stay intact."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select

from lifecycle.preferences.app import create_app
from lifecycle.preferences.db import default_url, read
from lifecycle.preferences.schema import Annotator, Vote
from lifecycle.preferences.store import NewBatch, PreferenceStore
from lifecycle.web_security import MAX_KEYS, RateLimiter
from tests.annotate_fixtures import annotate_config, comparison_items

FORM = {"content-type": "application/x-www-form-urlencoded"}
HOSTILE = ["'; DROP TABLE votes; --", "' OR '1'='1", "\" OR \"\"=\"", "1; DELETE FROM annotators",
           "x'); UPDATE votes SET choice='a'; --", "admin'--", "%' OR 1=1 --", "' UNION SELECT token_hash FROM a--"]
TABLES = {"batches", "items", "annotators", "assignments", "votes", "secrets", "ratings"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def vote(item_id: str, choice: str = "left", **extra: Any) -> dict[str, Any]:
    return {"vote_id": str(uuid.uuid4()), "item_id": item_id, "choice": choice, **extra}


@pytest.fixture
def store(tmp_path: Path) -> PreferenceStore:
    store = PreferenceStore.open(default_url(tmp_path))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=len(HOSTILE) + 1), comparison_items(2))
    return store


def test_a_bucket_holds_its_burst_and_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=30, burst=2, clock=lambda: now[0])  # one request every 2 s
    assert [limiter.take("alice"), limiter.take("alice")] == [0.0, 0.0]
    assert limiter.take("alice") == pytest.approx(2.0)  # empty: the wait until the next one
    assert limiter.take("bob") == 0.0  # a bucket per key
    now[0] = 1.0
    assert limiter.take("alice") == pytest.approx(1.0)  # half refilled; a refused request costs nothing
    now[0] = 2.0
    assert limiter.take("alice") == 0.0 and limiter.take("alice") == pytest.approx(2.0)
    now[0] = 1000.0  # a long pause refills to the burst, never beyond
    assert [limiter.take("alice") > 0 for _ in range(3)] == [False, False, True]
    for i in range(MAX_KEYS + 10):  # held buckets are bounded: the least recently used go first
        limiter.take(f"client-{i}")
    assert len(limiter._buckets) == MAX_KEYS
    assert all(RateLimiter(per_minute=0, burst=1).take("x") == 0.0 for _ in range(100))  # 0: no limit


def test_over_its_rate_a_token_gets_429_with_retry_after_and_other_credentials_do_not(store) -> None:
    client = TestClient(create_app(store, annotate_config(rate_limit_per_minute=20, rate_limit_burst=3)))
    alice, bob = bearer(store.add_annotator("alice")), bearer(store.add_annotator("bob"))
    shown = [client.get("/api/next", headers=alice) for _ in range(3)]
    assert [r.status_code for r in shown] == [200, 200, 200]
    refused = client.get("/api/next", headers=alice)
    retry_after = int(refused.headers["retry-after"])
    assert refused.status_code == 429 and 1 <= retry_after <= 3  # one request every 3 s
    assert "too many requests" in refused.json()["detail"] and refused.headers["x-frame-options"] == "DENY"
    item = shown[0].json()["item"]["item_id"]
    assert client.post("/api/votes", json=vote(item), headers=alice).status_code == 429
    assert store.progress("b1").votes == 0  # refused before the app ran
    time.sleep(retry_after)
    answer = client.post("/api/votes", json=vote(item), headers=alice)
    assert answer.status_code == 200 and answer.json()["status"] == "created"  # refilled
    assert [client.get("/api/next", headers=bob).status_code for _ in range(3)] == [200, 200, 200]
    for path in ("/healthz", "/static/annotate.js", "/docs", "/openapi.json", "/login"):  # never limited
        assert [client.get(path, headers=alice).status_code for _ in range(5)] == [200] * 5, path
    signed_in = client.post("/login", content=f"token={store.add_annotator('carol')}", headers=FORM)
    assert signed_in.status_code == 200 and client.get("/api/next").status_code == 200  # carol's session


def test_sign_in_attempts_are_limited_per_client_address(store) -> None:
    client = TestClient(create_app(store, annotate_config(rate_limit_per_minute=1, rate_limit_burst=3)))
    token = store.add_annotator("alice")
    guesses = [client.post("/login", content="token=guess", headers=FORM).status_code for _ in range(3)]
    assert guesses == [401, 401, 401]
    refused = client.post("/login", content=f"token={token}", headers=FORM)  # even the right token, for now
    assert refused.status_code == 429 and 55 <= int(refused.headers["retry-after"]) <= 60
    assert client.get("/api/next", headers=bearer(token)).status_code == 200  # the token's own bucket


def test_sql_injection_through_the_app_is_inert(store: PreferenceStore) -> None:
    client = TestClient(create_app(store, annotate_config()))
    carol = bearer(store.add_annotator("carol"))  # a bystander whose votes must survive
    while (item := client.get("/api/next", headers=carol).json()["item"]) is not None:
        assert client.post("/api/votes", json=vote(item["item_id"], "right", reason="fine"),
                           headers=carol).status_code == 200
    with read(store.engine) as s:
        carols = s.execute(select(Vote.id, Vote.item_id, Vote.choice, Vote.reason).order_by(Vote.id)).all()
    assert len(carols) == 2
    reasons: dict[str, str] = {}
    for text in HOSTILE:
        who = bearer(store.add_annotator(text))  # a hostile name is just a name
        item = client.get("/api/next", headers=who).json()["item"]["item_id"]
        for bad_item in (text, f"{item}{text}", f"{item}' OR '1'='1"):
            refused = client.post("/api/votes", json=vote(bad_item, reason=text), headers=who)
            if len(bad_item) > 64:  # item ids are at most 64 characters
                assert refused.status_code == 422, bad_item
            else:
                assert refused.status_code == 403 and bad_item in refused.json()["detail"], bad_item
        assert client.post("/api/votes", json={**vote(item), "vote_id": text}, headers=who).status_code == 422
        answer = client.post("/api/votes", json=vote(item, reason=text), headers=who)
        assert answer.status_code == 200 and answer.json()["status"] == "created"
        reasons[text] = text
        assert client.get("/api/next", headers=bearer(text)).status_code == 401  # as a token
        login = client.post("/login", content=urlencode({"token": text}), headers=FORM, follow_redirects=False)
        assert login.status_code == 401
        assert client.get(f"/api/batches/{quote(text, safe='')}/summary", headers=who).status_code == 404
        assert client.get(f"/api/batches/{quote(text, safe='')}/plot.png", headers=who).status_code == 404
        page = client.get("/summary", params={"batch": text}, headers=who)  # unknown: the newest batch is shown
        assert page.status_code == 200 and "b1" in page.text
        assert client.get("/api/next", params={"item": text, "batch": text}, headers=who).status_code == 200
    hostile_batch = "b2'; DROP TABLE items; --"
    store.publish_batch(NewBatch(hostile_batch, "human", votes_per_item=1), comparison_items(1, "other"))
    summary = client.get(f"/api/batches/{quote(hostile_batch, safe='')}/summary", headers=carol)
    assert summary.status_code == 200 and summary.json()["batch_id"] == hostile_batch

    assert TABLES <= set(inspect(store.engine).get_table_names())
    with read(store.engine) as s:
        stored = dict(s.execute(select(Annotator.name, Vote.reason).join(Vote, Vote.annotator_id == Annotator.id)
                                .where(Annotator.name != "carol")).all())
        assert s.execute(select(Vote.id, Vote.item_id, Vote.choice, Vote.reason)
                         .join(Annotator, Annotator.id == Vote.annotator_id).where(Annotator.name == "carol")
                         .order_by(Vote.id)).all() == carols
        assert set(s.scalars(select(Annotator.name))) == {"carol", *HOSTILE}
    assert stored == reasons  # every hostile reason stored as written, under its hostile author
    assert store.progress("b1").votes == len(HOSTILE) + 2 and [b.id for b in store.batches()] == ["b1", hostile_batch]

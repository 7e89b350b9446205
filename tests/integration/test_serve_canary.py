"""The canary (serve.traffic.challenger_share) on a real uvicorn server: requests that name no version go to
@challenger at the configured share, each end user (the request's `user`, the chat page's cookie, the API key,
else the client address) staying on the version drawn for them; every answer, its trace and its feedback name
the version that gave it; /health tallies answers, thumbs up and compare wins per version with intervals."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import mlflow
import pytest
from sqlalchemy import select

from lifecycle import names
from lifecycle.preferences.db import read
from lifecycle.preferences.schema import Rating
from lifecycle.serve.app import CLIENT_COOKIE, create_app
from tests.annotate_fixtures import serving
from tests.serve_fixtures import NAME, ServeState, make_serve_state, serve_config

pytestmark = [pytest.mark.integration]
USER = [{"role": "user", "content": "How do I write CSV rows?"}]
SHARE = 0.3


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> ServeState:
    return make_serve_state(tmp_path_factory.mktemp("canary"))


@pytest.fixture(scope="module")
def base(state: ServeState) -> Iterator[str]:
    cfg = serve_config(f"serve.traffic.challenger_share={SHARE}", "serve.server.rate_limit_per_minute=0")
    app = create_app(state.models(cfg), cfg, state.store(), state.experiment_id, reload=False)
    with serving(app) as url:
        yield url


def ask(base: str, stream: bool = False, cookies: dict | None = None, headers: dict | None = None,
        **body: object) -> tuple[str, dict]:
    """(the version that answered, per X-Lifecycle-Model; the reply: JSON, or the first event of a stream)."""
    payload = {"messages": USER, "stream": stream, **body}
    if stream:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=payload, cookies=cookies, headers=headers,
                          timeout=60) as reply:
            first = next(line for line in reply.iter_lines() if line.startswith("data: {"))
            version, alias = reply.headers["x-lifecycle-model"], reply.headers["x-lifecycle-alias"]
        event = json.loads(first.removeprefix("data: "))
        assert event["model"] == version and alias in ("champion", "challenger")
        return version, event
    reply = httpx.post(f"{base}/v1/chat/completions", json=payload, cookies=cookies, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == reply.headers["x-lifecycle-model"]
    return reply.headers["x-lifecycle-model"], reply.json()


def test_the_share_goes_to_the_challenger_and_each_user_stays_on_one_version(base: str, state: ServeState) -> None:
    champion, challenger = str(state.champion), str(state.challenger)
    drawn = {f"user-{i}": ask(base, user=f"user-{i}")[0] for i in range(60)}
    share = sum(v == challenger for v in drawn.values()) / len(drawn)
    assert set(drawn.values()) == {champion, challenger} and 0.15 <= share <= 0.45, share
    for user in list(drawn)[:6]:  # sticky, streamed or not
        assert ask(base, user=user)[0] == drawn[user] and ask(base, stream=True, user=user)[0] == drawn[user]
    # a request that names a version or an alias gets it, whoever asks
    canary_user = next(u for u, v in drawn.items() if v == challenger)
    assert ask(base, user=canary_user, model=f"{NAME}@champion")[0] == champion
    assert ask(base, user=canary_user, model=NAME)[0] == challenger  # the bare name is "no version named"
    # without `user`: the chat page's cookie, else the client address (as a trusted local proxy forwards it)
    page = httpx.get(f"{base}/")
    cookie = page.cookies[CLIENT_COOKIE]
    assert "httponly" in page.headers["set-cookie"].lower() and "samesite=strict" in page.headers["set-cookie"].lower()
    assert len({ask(base, cookies={CLIENT_COOKIE: cookie})[0] for _ in range(3)}) == 1
    assert CLIENT_COOKIE not in httpx.get(f"{base}/", cookies={CLIENT_COOKIE: cookie}).cookies  # kept, not redrawn
    by_address = {a: {ask(base, headers={"X-Forwarded-For": a})[0] for _ in range(2)}
                  for a in (f"192.0.2.{i}" for i in range(1, 13))}
    assert all(len(v) == 1 for v in by_address.values())
    assert {v for vs in by_address.values() for v in vs} == {champion, challenger}


def test_answers_traces_and_feedback_name_the_version_that_answered(base: str, state: ServeState) -> None:
    challenger = str(state.challenger)
    before = httpx.get(f"{base}/health").json()["live"].get(challenger, {"answers": 0})["answers"]
    user = next(f"who-{i}" for i in range(200) if ask(base, user=f"who-{i}")[0] == challenger)
    version, reply = ask(base, user=user)
    assert version == challenger
    traces = mlflow.search_traces(locations=[state.experiment_id], return_type="list", flush=True)
    tags = next(t for t in traces if t.info.trace_id == reply["trace_id"]).info.tags
    assert tags[names.MODEL] == challenger and tags[names.ALIAS] == "challenger"
    for score in (1, 1, -1):
        _, answer = ask(base, user=user)
        rating = {"kind": "rating", "feedback_id": str(uuid.uuid4()), "completion_id": answer["id"], "score": score}
        assert httpx.post(f"{base}/v1/feedback", json=rating).json()["status"] == "created"
    with read(state.store().engine) as session:  # the stored ratings name the version and the alias
        rated = [(r.model, json.loads(r.meta)["alias"]) for r in session.scalars(select(Rating))]
    assert rated.count((challenger, "challenger")) == 3
    health = httpx.get(f"{base}/health").json()
    assert health["traffic"] == {"challenger_share": SHARE}
    live = health["live"][challenger]
    assert live["answers"] >= before + 5
    thumbs = live["thumbs_up"]
    assert thumbs["n"] == 3 and thumbs["estimate"] == pytest.approx(2 / 3)
    assert 0 < thumbs["low"] < 2 / 3 < thumbs["high"] < 1


def compare(base: str, winner: str, loser: str, times: int) -> None:
    """`times` compare-mode votes for `winner`'s answer over `loser`'s (ids of two answers to one question)."""
    for _ in range(times):
        vote = {"kind": "compare", "feedback_id": str(uuid.uuid4()), "left": winner, "right": loser, "choice": "left"}
        assert httpx.post(f"{base}/v1/feedback", json=vote).json()["status"] == "created"


def test_promote_from_canary_moves_the_champion_only_on_live_numbers_that_pass(
        base: str, state: ServeState, capsys: pytest.CaptureFixture[str]) -> None:
    from lifecycle.cli import main
    from lifecycle.registry import CHALLENGER, CHAMPION, get_alias, set_alias, version_tags

    champion, challenger = str(state.champion), str(state.challenger)
    ours = ask(base, model=f"{NAME}@challenger")[1]["id"]
    theirs = ask(base, model=f"{NAME}@champion")[1]["id"]
    args = ["promote", "--from-canary", "--state-dir", str(state.state_dir), "--set", f"run.models.chat={NAME}",
            "--set", "run.experiment=serve-test", "--set", "promote.canary.min_answers=5",
            "--set", "promote.canary.min_compare_votes=6", "--set", "promote.canary.min_ratings=1000"]
    compare(base, ours, theirs, 2)
    compare(base, theirs, ours, 4)
    assert main(args) == 1  # 2 wins in 6: refused, on the record
    out = capsys.readouterr().out
    assert "FAIL    min_win_rate" in out and "skipped max_thumbs_up_drop" in out and "REFUSED" in out
    assert get_alias(NAME, CHAMPION) == state.champion
    tags = version_tags(state.challenger)
    assert tags[names.DECISION] == "refused (canary)" and "min_win_rate" in tags[names.DECISION_REASON]
    decision = mlflow.artifacts.load_dict(f"runs:/{tags[names.DECISION_RUN_ID]}/promote/decision.json")
    assert decision["live"][challenger]["answers"] >= 5 and decision["live"][champion]["answers"] >= 5
    assert decision["live"][challenger]["feedback"]["compared"][champion] == {"won": 2, "lost": 4, "tie": 0}

    assert main(["models", "--live", "--state-dir", str(state.state_dir), "--set", f"run.models.chat={NAME}",
                 "--set", "run.experiment=serve-test"]) == 0
    table = capsys.readouterr().out
    assert f"{challenger}" in table and "0.33 [" in table and "n=6" in table  # its compare wins: 2 of 6

    compare(base, ours, theirs, 20)  # 22 wins in 26: the lower bound of its win rate clears 0.5
    try:
        assert main(args) == 0
        assert "is now @champion" in capsys.readouterr().out
        assert get_alias(NAME, CHAMPION) == state.challenger
        assert version_tags(state.challenger)[names.DECISION] == "promoted (canary)"
    finally:
        set_alias(state.champion, CHAMPION)
        set_alias(state.challenger, CHALLENGER)

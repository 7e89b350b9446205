"""The human evaluation round's pieces on a real preference store (SQLite): the batch is named
`eval-<candidate>-vs-<other>`, blind (the candidate's side drawn per question and recorded, identical answers
left out as ties), shown to people by the annotation app as its preference batches are; people's votes become a
win rate with its interval and n; the gate has a rule on it only when the round ran, which fails on a round
without votes and reads the lower bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.align.sft_data import Pair
from lifecycle.config import load_config
from lifecycle.evaluate.gate import decide, human_rule
from lifecycle.evaluate.human import SOURCE, RoundPlan, batch_id_for, human_result, round_items
from lifecycle.preferences.assign import cast_votes, next_item
from lifecycle.preferences.db import default_url
from lifecycle.preferences.store import NewBatch, PreferenceStore
from tests.conftest import CONF

INTERVALS = load_config(CONF).evaluate.intervals


def questions(n: int) -> list[Pair]:
    return [Pair(({"role": "user", "content": f"What does f{i} do?"}, {"role": "assistant", "content": f"Does {i}."}),
                 "python-docs", True, question=f"What does f{i} do?") for i in range(n)]


def test_the_batch_is_named_by_both_models_and_fits_the_store() -> None:
    assert batch_id_for("lifecycle-gpt/3", "lifecycle-gpt/2", 1) == "eval-lifecycle-gpt-v3-vs-lifecycle-gpt-v2"
    assert batch_id_for("lifecycle-gpt/3", "lifecycle-gpt/2", 2).endswith("-v2-r2")
    long = [batch_id_for("a-very-long-registered-model-name/12", f"a-very-long-registered-model-name/{v}", 1)
            for v in (10, 11)]
    assert all(len(b) <= 64 and b.startswith("eval-a-very-long") for b in long) and long[0] != long[1]


def round_with_votes(store: PreferenceStore, choices: dict[int, list[str]], n: int = 24) -> RoundPlan:
    """A published round of n questions, question 0 answered identically; `choices[i]`: votes on question i as
    "candidate" | "other" | "tie"."""
    pairs = questions(n)
    ours = ["same"] + [f"candidate answer {i}" for i in range(1, n)]
    theirs = ["same"] + [f"other answer {i}" for i in range(1, n)]
    batch_id = batch_id_for("m/2", "m/1", 1)
    items, identical = round_items(batch_id, pairs, [p.prompt for p in pairs], ours, theirs)
    store.publish_batch(NewBatch(batch_id, SOURCE, 3, model="m/2 vs m/1"), items)
    by_question = {p.id: i for i, p in enumerate(pairs)}
    votes = []
    for item in store.items(batch_id):
        meta = json.loads(item.meta)
        meta_side = meta["candidate_is"]
        for k, choice in enumerate(choices.get(by_question[meta["question"]], [])):
            side = "tie" if choice == "tie" else meta_side if choice == "candidate" else "ab".replace(meta_side, "")
            votes.append((f"judge-{k}", item.id, side))
    cast_votes(store, batch_id, votes)
    return RoundPlan(batch_id, "human", "champion", "m/2", "m/1", tuple(p.id for p in pairs), tuple(identical),
                     len(items))


def test_pairs_are_blind_and_identical_answers_are_ties_not_asked(tmp_path: Path) -> None:
    pairs = questions(40)
    ours = [f"mine {i}" if i % 4 else "same" for i in range(40)]
    theirs = [f"theirs {i}" if i % 4 else "same" for i in range(40)]
    items, identical = round_items("eval-x", pairs, [p.prompt for p in pairs], ours, theirs)
    assert identical == [p.id for i, p in enumerate(pairs) if i % 4 == 0] and len(items) == 30
    assert {i.meta["candidate_is"] for i in items} == {"a", "b"}  # the candidate's side is drawn, not fixed
    for item in items:
        mine = item.response_a if item.meta["candidate_is"] == "a" else item.response_b
        assert mine.startswith("mine ") and item.meta["reference"].startswith("Does ")
    again, _ = round_items("eval-x", pairs, [p.prompt for p in pairs], ours, theirs)
    assert [i.id for i in again] == [i.id for i in items]  # the same draw on a re-run: the batch is found again


def test_people_see_the_round_in_the_app_and_their_votes_make_a_win_rate(tmp_path: Path) -> None:
    store = PreferenceStore.open(default_url(tmp_path))
    token = store.add_annotator("ann")
    votes = {i: ["candidate", "candidate", "other"] if i % 2 else ["tie"] for i in range(1, 20)}
    plan = round_with_votes(store, votes)
    shown = next_item(store, store.authenticate(token)[0])  # an item with fewer than 3 votes, shown to a person
    number = shown.prompt[0]["content"].split()[2].removeprefix("f") if shown else ""
    assert shown is not None and shown.batch_id == plan.batch_id
    assert {shown.left, shown.right} == {f"candidate answer {number}", f"other answer {number}"}
    found = human_result(store, plan, INTERVALS)
    # 10 questions at 2/3, 9 at 1/2 (one tie vote each), the identical one at 1/2; 4 questions without votes
    assert found["voted"] == 19 and found["identical"] == 1 and found["votes"] == 10 * 3 + 9
    iv = found["win_rate"]
    assert iv["n"] == 20 and iv["estimate"] == pytest.approx((10 * 2 / 3 + 10 * 0.5) / 20)
    assert iv["low"] < iv["estimate"] < iv["high"] and iv["level"] == 0.95
    assert found["annotators"] == 3 and found["left_wins"] is not None and found["batch_id"] == plan.batch_id
    empty = PreferenceStore.open(default_url(tmp_path / "empty"))
    only_ties = human_result(empty, round_with_votes(empty, {}), INTERVALS)["win_rate"]  # the identical answer
    assert only_ties == {"estimate": 0.5, "low": 0.5, "high": 0.5, "n": 1, "level": 0.95}


def evaluation_without_round() -> dict:
    return {"models": {"candidate": "m/2", "champion": None}, "metrics": {"candidate": {"val_bpb": 2.0}},
            "intervals": {}, "comparisons": {}}


def test_the_gate_rule_reads_the_lower_bound_and_needs_votes(tmp_path: Path) -> None:
    cfg = load_config(CONF).promote
    assert "human_win_rate" not in {r.rule for r in decide(cfg, evaluation_without_round(), "none").rules}
    store = PreferenceStore.open(default_url(tmp_path))
    unvoted = round_with_votes(store, {})
    no_votes = human_result(store, RoundPlan(**{**unvoted.to_dict(), "identical": ()}), INTERVALS)
    rule = human_rule(cfg, no_votes)
    assert no_votes["win_rate"] is None and rule.passed is False and "has no vote" in rule.line()
    liked = round_with_votes(PreferenceStore.open(default_url(tmp_path / "liked")),
                             {i: ["candidate"] * 3 for i in range(1, 24)})
    found = human_result(PreferenceStore.open(default_url(tmp_path / "liked")), liked, INTERVALS)
    rule = human_rule(cfg, found)
    assert rule.passed is True and rule.value == found["win_rate"]["low"] and "3 votes" not in rule.line()
    close = {**found, "win_rate": {"estimate": 0.5, "low": 0.35, "high": 0.65, "n": 48, "level": 0.95}}
    assert human_rule(cfg, close).passed is False  # 0.5 on its estimate, not shown above 0.4

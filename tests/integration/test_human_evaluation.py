"""The evaluate stage's human round for real, on the tiny chain (tests/integration/conftest.py):
- simulated: the judges vote on the blind batch `eval-<candidate>-vs-<sft>` at once; evaluation.json, the report
  card and the gate's decision carry the win rate with its interval and n;
- people: the flow waits, a person votes in the annotation app (blind: sides drawn per item and per person),
  the last vote resumes the flow by itself, and the win rate is exactly what the stored votes say;
- the round's votes never enter a preference set: the next preferences export holds none of them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from flows.pipeline import pipeline
from lifecycle.evaluate.human import SOURCE
from lifecycle.preferences.db import default_url
from lifecycle.preferences.export import read_snapshot
from lifecycle.preferences.store import PreferenceStore
from tests.conftest import CONF
from tests.integration.conftest import copy_state
from tests.integration.test_preferences_flow import vote_through_the_app, wait_for_batch
from tests.integration.test_promotion_pipeline import RELAXED

pytestmark = pytest.mark.integration
ROUND = [*RELAXED, "rlhf.policy.rloo.learning_rate=5.0",  # a policy whose answers differ from the SFT model's
         "evaluate.human.enabled=true", "evaluate.human.prompts=4", "promote.human.min_win_rate=0"]


def evaluation_of(out: dict) -> dict:
    return json.loads((Path(out["evaluate"]["path"]) / "evaluation.json").read_text())


def test_a_blind_round_gates_the_candidate_and_never_trains_a_model(sft_trained: Path, tmp_path: Path) -> None:
    """Three pipeline runs after sft (a simulated round, a round of people, a new preference set): under a
    minute."""
    state = copy_state(sft_trained, tmp_path / "state")
    out = pipeline(overrides=[*ROUND, "evaluate.human.mode=simulated"], state_dir=str(state), conf_dir=str(CONF))
    human = evaluation_of(out)["human"]
    assert human["batch_id"] == f"eval-{human['candidate_model'].replace('/', '-v')}-vs-" \
                                f"{human['other_model'].replace('/', '-v')}" and human["other"] == "sft"
    assert human["items"] > 0 and human["items"] + human["identical"] == human["questions"] == 4
    assert human["votes"] == 3 * human["items"] and human["mode"] == "simulated"  # three judges on every pair
    iv = human["win_rate"]
    assert iv["n"] == 4 and iv["low"] <= iv["estimate"] <= iv["high"]
    assert evaluation_of(out)["comparisons"]["candidate_vs_sft"]["human_win_rate"] == iv
    rule = next(r for r in json.loads((Path(out["promote"]["path"]) / "decision.json").read_text())["rules"]
                if r["rule"] == "human_win_rate")
    assert rule["value"] == iv["low"] and rule["passed"] is True
    assert "## Human evaluation (blind pairwise)" in (Path(out["evaluate"]["path"]) / "report.md").read_text()

    people = ["evaluate.human.mode=human", "evaluate.human.round=2", "evaluate.human.votes_per_item=1",
              "evaluate.human.min_agreement=-1", "evaluate.human.poll_interval_s=1", "evaluate.human.timeout_s=300"]
    stop = threading.Event()
    voter = threading.Thread(target=lambda: vote_through_the_app(wait_for_batch(default_url(state), stop), ["ann"],
                                                                 stop, leave_when_done=True), daemon=True)
    voter.start()
    try:
        out = pipeline(overrides=[*ROUND, *people], state_dir=str(state), conf_dir=str(CONF), from_stage="evaluate")
    finally:
        stop.set()
        voter.join(timeout=30)
    human = evaluation_of(out)["human"]
    store = PreferenceStore.open(default_url(state))
    batch = store.batch(human["batch_id"])
    assert batch is not None and batch.source == SOURCE and human["batch_id"].endswith("-r2")
    assert human["mode"] == "human" and human["votes"] == human["items"] and human["annotators"] == 1
    assert human["resumed_by"] in ("", "the annotation app (quota and agreement met)")  # not a person: all voted
    sides = {i.id: json.loads(i.meta) for i in store.items(batch.id)}
    judged = store.judgements(batch.id)
    assert {j.left for j in judged} <= {"a", "b"} and all(j.choice == j.left for j in judged)  # voted the left one
    wins = {sides[j.item_id]["question"]: float(j.choice == sides[j.item_id]["candidate_is"]) for j in judged}
    expected = (sum(wins.values()) + 0.5 * human["identical"]) / (len(wins) + human["identical"])
    assert human["win_rate"]["estimate"] == pytest.approx(expected) and human["win_rate"]["n"] == 4

    asked = {(i.response_a, i.response_b) for b in store.batches() if b.source == SOURCE for i in store.items(b.id)}
    prefs = pipeline(overrides=[*ROUND, "preferences.round=2"], state_dir=str(state), conf_dir=str(CONF),
                     until="preferences")["preferences"]
    rows = read_snapshot(Path(prefs["path"]) / "preferences.jsonl")
    assert rows and {r["source"] for r in rows} == {"simulated"}
    exported = {frozenset((r["chosen"][0]["content"], r["rejected"][0]["content"])) for r in rows}
    assert not exported & {frozenset(pair) for pair in asked}  # none of the round's pairs became training data

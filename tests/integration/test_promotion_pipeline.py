"""evaluate and promote for real on the tiny chain (the session's, tests/integration/conftest.py): the first
candidate passes the (relaxed) minimums and becomes @champion with its lineage, its report card and its
decision record, its lm-evaluation-harness scores (a task of our own) logged and on the card, and a gate rule
on them recorded; a deliberately broken candidate is measured against that champion, refused with its failed
rules (a harness minimum it cannot reach among them), and the champion stays; an evaluation that crashes
(the champion's registered files were changed) leaves the champion as it was; a fully cached re-run decides nothing new; feedback from the chat page joins
the next preference set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from lifecycle.errors import LifecycleError
from lifecycle.preferences.db import store_url
from lifecycle.preferences.feedback import Answered, record_comparison
from lifecycle.preferences.export import read_snapshot
from lifecycle.preferences.store import PreferenceStore
from lifecycle.registry import CHALLENGER, CHAMPION, ModelRef, get_alias, version_tags
from lifecycle.tracking import tracking_uri, use_tracking
from tests.conftest import CONF
from tests.harness_fixtures import TASK, write_task
from tests.integration.conftest import OVERRIDES, copy_state

pytestmark = pytest.mark.integration
RELAXED = [*OVERRIDES, "promote.minimums.max_bpb=100", "promote.minimums.min_rouge_l=0",
           "promote.minimums.min_rag_gain=-1", "promote.minimums.min_gain_over_base=-1",
           "promote.minimums.min_recall=0", "promote.against_sft.min_gold_win_rate=0",
           "promote.against_sft.max_rouge_l_drop=1"]  # tiny models answer badly
LINEAGE = ("lifecycle.data_key", "lifecycle.validation", "lifecycle.tokenizer_key", "lifecycle.preference_set_hash",
           "lifecycle.reward_model", "lifecycle.rag_index_version", "lifecycle.pipeline_config_hash",
           "mlflow.source.git.commit", "lifecycle.decision", "lifecycle.gate.max_bpb")


@pytest.mark.slow
def test_the_gate_promotes_then_refuses_a_worse_candidate(sft_trained: Path, tmp_path: Path) -> None:
    """Four pipeline runs after sft (the first candidate, a cached re-run, a broken candidate measured against
    the champion, a crashing evaluation), two of them training and evaluating: most of a minute."""
    state = copy_state(sft_trained, tmp_path / "state")  # ingest .. sft cached (tests/integration/conftest.py)
    tasks = write_task(tmp_path / "harness")  # lm-evaluation-harness on a task of our own (tests/harness_fixtures.py)
    harness = [*RELAXED, f"evaluate.harness.tasks=[{TASK}]", f"evaluate.harness.include_path={tasks}",
               "evaluate.harness.batch_size=4"]
    passing = [*harness, f"promote.harness.minimums.{TASK}/acc=0"]
    out = pipeline(overrides=passing, state_dir=str(state), conf_dir=str(CONF))
    assert list(out)[-2:] == ["evaluate", "promote"]
    use_tracking(state)
    first = ModelRef(**out["rlhf"]["model"])
    assert get_alias(first.name, CHAMPION) == first and get_alias(first.name, CHALLENGER) == first
    tags = version_tags(first)
    assert all(tag in tags for tag in LINEAGE), sorted(set(LINEAGE) - set(tags))
    assert tags["lifecycle.validation"].startswith("passed") and tags["lifecycle.decision"] == "promoted"
    evaluated = Path(out["evaluate"]["path"])
    evaluation = json.loads((evaluated / "evaluation.json").read_text())
    assert evaluation["models"]["champion"] is None and evaluation["models"]["candidate"] == str(first)
    assert {"val_bpb", "rouge_l_rag", "rouge_l_no_rag", "win_rate_vs_sft", "recall_at_5", "latency_p50_ms",
            "tokens_per_s"} <= set(evaluation["metrics"]["candidate"])
    report = (evaluated / "report.md").read_text()
    plots = sorted(p.name for p in (evaluated / "plots").glob("*.png"))
    assert plots and all(f"plots/{name}" in report for name in plots) and "cost" in report.lower()
    client = MlflowClient(tracking_uri(state))
    logged = [a.path for a in client.list_artifacts(out["evaluate"]["run_id"], "evaluate")]
    assert "evaluate/report.md" in logged and "evaluate/plots" in logged
    assert [a.path for a in client.list_artifacts(out["promote"]["run_id"], "promote")] == [
        "promote/decision.json", "promote/decision.md", "promote/report"]
    assert "promoted" in (Path(out["promote"]["path"]) / "report" / "report.md").read_text().lower()
    scores = evaluation["harness"]["scores"]
    assert set(scores) == {"candidate", "sft", "base"}
    assert all(set(found) == {f"{TASK}/acc", f"{TASK}/acc_norm"} and all(s["stderr"] is not None and s["n"] == 10
                                                                         for s in found.values())
               for found in scores.values())
    logged = client.get_run(out["evaluate"]["run_id"]).data.metrics
    assert logged["evaluate/harness/seconds"] == pytest.approx(sum(evaluation["harness"]["seconds"].values()))
    for role, found in scores.items():
        for name, score in found.items():
            assert logged[f"evaluate/harness/{role}/{name}"] == pytest.approx(score["value"])
            assert logged[f"evaluate/harness/{role}/{name}_stderr"] == pytest.approx(score["stderr"])
    assert "## Standard benchmarks (lm-evaluation-harness)" in report and f"| `{TASK}/acc` |" in report
    rule = next(r for r in json.loads((Path(out["promote"]["path"]) / "decision.json").read_text())["rules"]
                if r["rule"] == f"harness_minimum/{TASK}/acc")
    assert rule["passed"] is True and rule["value"] == scores["candidate"][f"{TASK}/acc"]["value"]
    assert tags[f"lifecycle.gate.harness_minimum/{TASK}/acc"].startswith("pass")

    again = pipeline(overrides=passing, state_dir=str(state), conf_dir=str(CONF))
    assert again["evaluate"]["cached"] and again["promote"]["cached"]  # the champion it measured against: none

    worse = [*harness, "rlhf.policy.rloo.learning_rate=5.0", f"promote.harness.minimums.{TASK}/acc=1.01",
             f"promote.harness.max_drop_vs_champion.{TASK}/acc=1"]
    broken = pipeline(overrides=worse, state_dir=str(state), conf_dir=str(CONF))
    second = ModelRef(**broken["rlhf"]["model"])
    decision = json.loads((Path(broken["promote"]["path"]) / "decision.json").read_text())
    assert decision["candidate"] == str(second) and decision["champion"] == str(first)
    assert decision["passed"] is False and decision["mode"] == "champion"
    assert {"bpb_regression", f"harness_minimum/{TASK}/acc"} <= {r["rule"] for r in decision["rules"]
                                                               if r["passed"] is False}
    measured = json.loads((Path(broken["evaluate"]["path"]) / "evaluation.json").read_text())["harness"]["scores"]
    drop = next(r for r in decision["rules"] if r["rule"] == f"harness_drop_vs_champion/{TASK}/acc")
    assert drop["passed"] is True and drop["value"] == pytest.approx(
        measured["candidate"][f"{TASK}/acc"]["value"] - measured["champion"][f"{TASK}/acc"]["value"])
    assert get_alias(first.name, CHAMPION) == first  # the champion stays
    assert version_tags(second)["lifecycle.decision"] == "refused"

    # the gate's evaluation crashes (the champion's files in the registry were changed): the champion stays
    model_id = MlflowClient().get_model_version(first.name, first.version).source.removeprefix("models:/")
    weights = state / "mlflow" / "artifacts" / "models" / model_id / "artifacts" / "model" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    shutil.rmtree(state / "models" / first.name / first.version)  # so evaluate fetches it again
    evaluations = sorted(p.name for p in (state / "artifacts" / "evaluate").iterdir())
    with pytest.raises(LifecycleError, match=f"{first}: its files in the registry .* differ"):
        pipeline(overrides=worse, state_dir=str(state), conf_dir=str(CONF), from_stage="evaluate")
    assert get_alias(first.name, CHAMPION) == first and version_tags(second)["lifecycle.decision"] == "refused"
    assert sorted(p.name for p in (state / "artifacts" / "evaluate").iterdir()) == evaluations  # nothing half-made
    weights.write_bytes(blob)


def test_chat_feedback_joins_the_next_preference_set(pretrained: Path, tmp_path: Path) -> None:
    state = copy_state(pretrained, tmp_path / "state")  # ingest .. pretrain cached
    first = pipeline(overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="preferences")
    store = PreferenceStore.open(store_url(None, state))
    question = "What does json.loads do?"
    a = Answered("chatcmpl-1", question, "Deserialize a JSON document.", "lifecycle-gpt/2", "champion", "tr-1")
    b = Answered("chatcmpl-2", question, "It bakes bread.", "lifecycle-gpt/1", "challenger", "tr-2")
    record_comparison(store, "fb-1", "chat", a, b, left="b", choice="a", name="lifecycle-gpt")
    second = pipeline(overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="preferences")
    assert first["sft"]["cached"] is False and second["sft"]["cached"]
    assert not second["preferences"]["cached"] and second["preferences"]["digest"] != first["preferences"]["digest"]
    rows = read_snapshot(Path(second["preferences"]["path"]) / "preferences.jsonl")
    fed = [r for r in rows if r["source"] == "feedback"]
    assert len(fed) == 1 and fed[0]["chosen"][0]["content"] == "Deserialize a JSON document."
    assert second["preferences"]["metrics"]["feedback"] == 1
    third = pipeline(overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="preferences")
    assert third["preferences"]["cached"]  # no new feedback: nothing to redo

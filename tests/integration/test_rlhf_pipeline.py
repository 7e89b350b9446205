"""The rlhf stage for real on the tiny chain: a reward model trained on the (simulated) preference set and
registered; an RLOO policy against it with a KL leash, registered as the chat model's next version with
its lineage and health tag, becoming @candidate, its greedy answers to held-out prompts scored by the
proxy and the gold judge (the simulated judges' references) at step 0, every 2 steps and the last;
`lifecycle eval-reward` scores a user's file with it; DPO as the alternative, with its gold curve too; a
stage run alone on the cached inputs is a cache hit. And a reward model of its own
(`rlhf.reward.model: all-MiniLM-L6-v2`, installed offline): trained on the same preference set and registered
with its lineage (the encoder it started from and the digest of its files, what it reads; no SFT base model),
the policy optimised against it, and evaluate loading it from the registry for the candidate's reward-model
win rate against the SFT model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from flows.stages import FLOWS
from lifecycle.cli import main
from lifecycle.hub import checkpoint_digest, local_checkpoint
from lifecycle.preferences.export import read_snapshot
from lifecycle.registry import ModelRef, get_alias, version_tags
from lifecycle.runtime import RunSettings
from lifecycle.tracking import tracking_uri, use_tracking
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES, copy_state

pytestmark = pytest.mark.integration
ENCODER = ["rlhf.reward.model=all-MiniLM-L6-v2", "rlhf.reward.max_length=64",
           "rlhf.reward.trainer.per_device_train_batch_size=4"]  # tests/conftest.py TINY: 6 steps


@pytest.fixture(scope="module")
def preferred(sft_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny chain (ingest .. sft cached, tests/integration/conftest.py) through the preference
    set; each test below takes a copy."""
    state = copy_state(sft_trained, tmp_path_factory.mktemp("rlhf") / "state")
    pipeline(overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="preferences")
    return state


def test_rlhf_registers_the_policy_and_reward_model_with_lineage(preferred: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = copy_state(preferred, tmp_path / "state")
    # tests/conftest.py TINY: a few steps of each trainer; answers short enough for its 32-token context
    overrides = [*OVERRIDES, "rlhf.gold.every=2", "rlhf.gold.max_new_tokens=6"]
    out = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(CONF), until="rlhf")
    assert list(out)[-3:] == ["sft", "preferences", "rlhf"]
    use_tracking(state)
    sft, policy = ModelRef(**out["sft"]["model"]), ModelRef(**out["rlhf"]["model"])
    assert policy.name == sft.name and int(policy.version) == int(sft.version) + 1
    tags = version_tags(policy)
    assert tags["lifecycle.base_model"] == str(sft)
    assert tags["lifecycle.preference_set_hash"] == out["preferences"]["digest"]
    assert tags["lifecycle.rlhf.alarm"] in ("none",) or tags["lifecycle.rlhf.alarm"]
    reward = ModelRef(*tags["lifecycle.reward_model"].split("/"))
    assert reward.name == "lifecycle-gpt-reward" and "lifecycle.reward.accuracy" in version_tags(reward)
    assert get_alias(policy.name, "candidate") == policy  # the run's final model
    client = MlflowClient(tracking_uri(state))
    metrics = client.get_run(out["rlhf"]["run_id"]).data.metrics
    assert "rlhf/reward_model/accuracy" in metrics and "rlhf/health_alarm" in metrics
    assert metrics["rlhf/gold_points"] == 3 and 0 <= metrics["rlhf/gold_last"] <= 1
    for curve in ("rlhf/gold/proxy", "rlhf/gold/gold", "rlhf/gold/kl"):  # the RLOO run has 3 steps
        assert sorted(m.step for m in client.get_metric_history(out["rlhf"]["run_id"], curve)) == [0, 2, 3], curve
    rows = read_snapshot(Path(out["preferences"]["path"]) / "preferences.jsonl")
    assert all(r["reference"] for r in rows)  # every simulated pair carries the reference it was judged by

    pairs = tmp_path / "mine.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "What does json.dumps do?", "chosen": "Serialize obj to a JSON formatted str.", "rejected": "No."},
        {"prompt": "What does csv.reader do?", "chosen": "Return a reader object.", "rejected": "It bakes bread."},
    ]) + "\n")
    assert main(["eval-reward", "--pairs", str(pairs), "--state-dir", str(state), "--conf", str(CONF)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(reward) and report["pairs"] == 2
    assert 0 <= report["accuracy"] <= 1 and report["length_baseline"] == 1.0

    alone = FLOWS["rlhf"](settings=RunSettings(overrides=overrides, state_dir=str(state), conf_dir=str(CONF)))
    assert alone.cached and alone.model == policy

    dpo = pipeline(overrides=[*overrides, "rlhf.method=dpo"], state_dir=str(state), conf_dir=str(CONF),
                   until="rlhf")["rlhf"]
    assert not dpo["cached"] and ModelRef(**dpo["model"]).version != policy.version
    assert "lifecycle.reward_model" not in version_tags(ModelRef(**dpo["model"]))
    assert dpo["metrics"]["margin_after"] > dpo["metrics"]["margin_before"] - 1.0  # recorded (tiny run: no claim)
    assert dpo["metrics"]["gold_points"] >= 2 and version_tags(ModelRef(**dpo["model"]))["lifecycle.rlhf.alarm"]
    assert client.get_metric_history(dpo["run_id"], "rlhf/gold/gold")[0].step == 0


def test_an_encoder_reward_model_is_trained_registered_and_used_by_evaluate(preferred: Path, tmp_path: Path) -> None:
    state = copy_state(preferred, tmp_path / "state")
    out = pipeline(overrides=[*OVERRIDES, *ENCODER], state_dir=str(state), conf_dir=str(CONF), until="evaluate")
    assert out["preferences"]["cached"] and not out["rlhf"]["cached"]
    use_tracking(state)
    policy = ModelRef(**out["rlhf"]["model"])
    reward = ModelRef(*version_tags(policy)["lifecycle.reward_model"].split("/"))
    tags = version_tags(reward)
    assert reward.name == "lifecycle-gpt-reward" and tags["lifecycle.reward.input"] == "pair"
    assert tags["lifecycle.reward.base"] == "all-MiniLM-L6-v2"
    assert tags["lifecycle.reward.base_sha256"] == checkpoint_digest(local_checkpoint("all-MiniLM-L6-v2"))
    assert tags["lifecycle.preference_set_hash"] == out["preferences"]["digest"]
    assert tags["lifecycle.stage_key"] == version_tags(policy)["lifecycle.stage_key"]
    assert "lifecycle.base_model" not in tags and 0 <= float(tags["lifecycle.reward.accuracy"]) <= 1
    assert version_tags(policy)["lifecycle.base_model"] == str(ModelRef(**out["sft"]["model"]))
    assert out["rlhf"]["metrics"]["reward_model/steps"] == 6

    evaluation = json.loads((Path(out["evaluate"]["path"]) / "evaluation.json").read_text())
    assert evaluation["models"]["candidate"] == str(policy)
    assert 0 <= evaluation["metrics"]["candidate"]["win_rate_vs_sft"] <= 1
    margins = evaluation["per_question"]["reward_margin"]["sft"]
    assert len(margins) == evaluation["prompts"] and all(m is not None for m in margins)  # cut to fit, never dropped
    assert "reward_win_rate" in evaluation["comparisons"]["candidate_vs_sft"]

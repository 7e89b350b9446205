"""The rlhf stage for real on the tiny chain: a reward model trained on the (simulated) preference set and
registered; an RLOO policy against it with a KL leash, registered as the chat model's next version with
its lineage and health tag, becoming @candidate, its greedy answers to held-out prompts scored by the
proxy and the gold judge (the simulated judges' references) at step 0, every 2 steps and the last;
`lifecycle eval-reward` scores a user's file with it; DPO as the alternative, with its gold curve too; a
stage run alone on the cached inputs is a cache hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from flows.stages import FLOWS
from lifecycle.cli import main
from lifecycle.preferences.export import read_snapshot
from lifecycle.registry import ModelRef, get_alias, version_tags
from lifecycle.runtime import RunSettings
from lifecycle.tracking import tracking_uri, use_tracking
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES, copy_state

pytestmark = pytest.mark.integration


def test_rlhf_registers_the_policy_and_reward_model_with_lineage(sft_trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = copy_state(sft_trained, tmp_path / "state")  # ingest .. sft cached (tests/integration/conftest.py)
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

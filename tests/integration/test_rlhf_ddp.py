"""The rlhf stage under torchrun on CPU: with `rlhf.distributed.nproc: 2` the reward model and the RLOO policy
train in two processes (DDP over gloo), and the task registers both exactly as the in-process stage does:
the same lineage tags, the reward/policy metrics and curves in the stage's MLflow run, and a world size of 2
showing both processes joined the training. An encoder reward model of its own (`rlhf.reward.model`) trains and
scores the policy's completions under torchrun too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from lifecycle.registry import ModelRef, version_tags
from lifecycle.tracking import tracking_uri, use_tracking
from tests.conftest import CONF
from tests.integration.test_preferences_flow import OVERRIDES

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# a shorter chain than the other rlhf tests (the models' quality is not the point here), and imported pairs:
# a set of known size, whatever answers the barely trained SFT model gives
FAST = [*OVERRIDES, "pretrain.max_steps=12", "pretrain.eval_every=0", "sft.trainer.max_steps=8",
        "preferences.mode=import"]
WORDS = ["json.dumps", "csv.reader", "textwrap.fill", "shlex.split", "fnmatch.fnmatch", "string.capwords"]
# two processes with half the per-process batch: the same global batch (the tiny set has few prompts)
TWO = ["rlhf.distributed.nproc=2", "rlhf.policy.rloo.per_device_train_batch_size=2"]
# tags that differ between the two runs: their pipeline runs, the stage key and config hashes (the config
# changed), the reward model's version and accuracy (the pairs are sharded another way), the verdicts
DIFFERENT = {"lifecycle.pipeline_run_id", "lifecycle.pipeline_config_hash", "lifecycle.stage_key",
             "lifecycle.config_hash", "lifecycle.rlhf_config_hash", "lifecycle.reward_model",
             "lifecycle.reward.accuracy", "lifecycle.rlhf.alarm", "lifecycle.reward.flagged",
             "lifecycle.files_sha256"}  # the weights: two processes train other ones


def write_pairs(path: Path) -> Path:
    """18 pairs over 18 prompts: the answer naming the function wins."""
    path.write_text("\n".join(json.dumps({"prompt": f"What does {w} do{end}", "rejected": "No idea.",
                                            "chosen": f"{w} is in the standard library."})
                                for w in WORDS for end in ("?", ", briefly?", " in Python?")) + "\n")
    return path


def lineage(ref: ModelRef) -> dict[str, str]:
    return {k: v for k, v in version_tags(ref).items() if k.startswith("lifecycle.") and k not in DIFFERENT}


def test_rlhf_under_torchrun_registers_what_the_in_process_stage_registers(tmp_path: Path) -> None:
    """Its own shorter chain, not the session's (tests/integration/conftest.py): this barely trained SFT model
    never ends an answer early, so both runs log the same health metrics (a reward-length correlation needs
    answers of different lengths, and under torchrun rank 0 sees only its half of them)."""
    state = tmp_path / "state"
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    fast = [*FAST, f"preferences.import.files=[{pairs}]"]
    single = pipeline(overrides=fast, state_dir=str(state), conf_dir=str(CONF), until="rlhf")
    double = pipeline(overrides=[*fast, *TWO], state_dir=str(state), conf_dir=str(CONF), until="rlhf")
    assert double["sft"]["cached"] and double["preferences"]["cached"] and not double["rlhf"]["cached"]
    use_tracking(state)
    one, two = ModelRef(**single["rlhf"]["model"]), ModelRef(**double["rlhf"]["model"])
    assert two.name == one.name and int(two.version) == int(one.version) + 1
    assert lineage(two) == lineage(one)
    assert lineage(two)["lifecycle.base_model"] == str(ModelRef(**double["sft"]["model"]))
    reward = ModelRef(*version_tags(two)["lifecycle.reward_model"].split("/"))
    reward_single = ModelRef(*version_tags(one)["lifecycle.reward_model"].split("/"))
    assert reward.name == reward_single.name and reward.version != reward_single.version
    assert lineage(reward) == lineage(reward_single) and "lifecycle.reward.accuracy" in version_tags(reward)

    client = MlflowClient(tracking_uri(state))
    metrics = client.get_run(double["rlhf"]["run_id"]).data.metrics
    assert metrics["rlhf/world_size"] == 2  # both processes were in the group the trainers trained in
    assert metrics["rlhf/reward_model/steps"] == 6 and metrics["rlhf/steps"] == 3  # every step ran (tests/conftest.py)
    expected = set(client.get_run(single["rlhf"]["run_id"]).data.metrics) | {"rlhf/world_size"}
    assert expected <= set(metrics)  # the summary, reward model and policy metrics, health
    for curve in ("rlhf/reward_model/train/loss", "rlhf/policy/train/reward", "rlhf/health/reward"):
        assert client.get_metric_history(double["rlhf"]["run_id"], curve), curve  # logged by rank 0
    assert client.get_run(double["rlhf"]["run_id"]).data.tags["lifecycle.device_count"] == "2"
    out = Path(double["rlhf"]["path"])
    assert {p.name for p in out.iterdir()} >= {"policy", "reward_model", "reward_metrics.json", "policy_health.json"}


def test_an_encoder_reward_model_trains_under_torchrun(tmp_path: Path) -> None:
    state = tmp_path / "state"
    encoder = ["rlhf.reward.model=all-MiniLM-L6-v2", "rlhf.reward.max_length=48",
               "rlhf.reward.trainer.per_device_train_batch_size=2"]
    fast = [*FAST, f"preferences.import.files=[{write_pairs(tmp_path / 'pairs.jsonl')}]", *TWO, *encoder]
    out = pipeline(overrides=fast, state_dir=str(state), conf_dir=str(CONF), until="rlhf")["rlhf"]
    use_tracking(state)
    reward = ModelRef(*version_tags(ModelRef(**out["model"]))["lifecycle.reward_model"].split("/"))
    tags = version_tags(reward)
    assert tags["lifecycle.reward.input"] == "pair" and tags["lifecycle.reward.base"] == "all-MiniLM-L6-v2"
    metrics = MlflowClient(tracking_uri(state)).get_run(out["run_id"]).data.metrics
    assert metrics["rlhf/world_size"] == 2 and metrics["rlhf/reward_model/steps"] == 6 and metrics["rlhf/steps"] == 3
    assert math.isfinite(metrics["rlhf/reward_first"])  # the policy's completions, scored by the encoder

"""LoRA through the real flows on the tiny chain: sft registers an adapter (naming the base model's version),
the preferences stage samples from it, the reward model trains as an adapter of the SFT version and the RLOO
policy as a merged LoRA; evaluate loads all three from the registry (the SFT adapter and the reward adapter with
their bases); `lifecycle ask` answers with the adapter version; DPO's adapter on top of the SFT adapter loads
through both bases; a bad peft key fails before any stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.pipeline import pipeline
from lifecycle.cli import main
from lifecycle.errors import ConfigError
from lifecycle.lora import adapter_base
from lifecycle.model import load_causal_lm
from lifecycle.registry import ModelRef, local_copy, version_tags
from lifecycle.tracking import use_tracking
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES, copy_state

pytestmark = pytest.mark.integration
LORA = ["sft.peft={r: 8, lora_alpha: 16, target_modules: all-linear, register: adapter}",
        "rlhf.reward.peft={r: 8, register: adapter}", "rlhf.policy.peft={r: 8, target_modules: all-linear}"]


def test_lora_versions_are_registered_and_loaded_by_every_stage(pretrained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = copy_state(pretrained, tmp_path / "state")
    overrides = [*OVERRIDES, *LORA]
    out = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(CONF), until="evaluate")
    use_tracking(state)
    base, sft = ModelRef(**out["pretrain"]["model"]), ModelRef(**out["sft"]["model"])
    policy = ModelRef(**out["rlhf"]["model"])
    tags = version_tags(sft)
    assert tags["lifecycle.peft"] == "adapter" and tags["lifecycle.adapter_base"] == base.uri
    assert out["sft"]["metrics"]["trainable_share"] < 0.5
    sft_copy = local_copy(sft, state / "models")
    assert adapter_base(sft_copy) == base.uri and not (sft_copy / "model.safetensors").exists()
    reward = ModelRef(*version_tags(policy)["lifecycle.reward_model"].split("/"))
    assert version_tags(reward)["lifecycle.adapter_base"] == sft.uri  # the SFT version, an adapter itself
    assert version_tags(policy)["lifecycle.peft"] == "merged" and "lifecycle.adapter_base" not in version_tags(policy)
    evaluation = json.loads((Path(out["evaluate"]["path"]) / "evaluation.json").read_text())
    assert evaluation["models"]["candidate"] == str(policy) and evaluation["models"]["sft"] == str(sft)
    assert all(m is not None for m in evaluation["per_question"]["reward_margin"]["sft"])

    assert main(["ask", "What does json.dumps do?", "--model", str(sft), "--state-dir", str(state),
                 "--conf", str(CONF), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] is not None

    dpo = pipeline(overrides=[*overrides, "rlhf.method=dpo", "rlhf.dpo.peft={r: 8, register: adapter}"],
                   state_dir=str(state), conf_dir=str(CONF), until="rlhf")["rlhf"]
    dpo_ref = ModelRef(**dpo["model"])
    assert version_tags(dpo_ref)["lifecycle.adapter_base"] == sft.uri
    model, tokenizer = load_causal_lm(local_copy(dpo_ref, state / "models"), state / "models")  # two bases deep
    assert model.config.vocab_size == len(tokenizer)

    with pytest.raises(ConfigError, match=r"rlhf.policy.peft.rank = 8: not a peft.LoraConfig option"):
        pipeline(overrides=[*overrides, "rlhf.policy.peft.rank=8"], state_dir=str(state), conf_dir=str(CONF),
                 until="rlhf")

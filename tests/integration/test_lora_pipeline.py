"""LoRA through the real flows on the tiny chain: the reward model trains as an adapter of the SFT version and
the RLOO policy as a merged LoRA; evaluate loads both from the registry (the reward adapter with its base); DPO
registers an adapter; sft registers an adapter naming the base model's version, the preferences stage samples
from it and `lifecycle ask` answers with it; a bad peft key fails before any stage runs. And a LoRA sft run killed
with kill -9 resumes from its adapter checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows.pipeline import pipeline
from lifecycle.cli import main
from lifecycle.errors import ConfigError
from lifecycle.lora import adapter_base
from lifecycle.manifest import SEAL
from lifecycle.model import load_causal_lm
from lifecycle.registry import ModelRef, local_copy, version_tags
from lifecycle.tracking import use_tracking
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES, copy_state
from tests.integration.test_orphans import CLEAN_ENV, ROOT, command
from tests.integration.test_stage_faults import committed, stage_metrics, versions

pytestmark = pytest.mark.integration
RLHF_LORA = ["rlhf.reward.peft={r: 8, register: adapter}", "rlhf.policy.peft={r: 8, target_modules: all-linear}"]
SFT_ADAPTER = "sft.peft={r: 8, lora_alpha: 16, target_modules: all-linear, register: adapter}"


def test_lora_versions_are_registered_and_loaded_by_every_stage(sft_trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = copy_state(sft_trained, tmp_path / "state")
    out = pipeline(overrides=[*OVERRIDES, *RLHF_LORA], state_dir=str(state), conf_dir=str(CONF), until="evaluate")
    use_tracking(state)
    sft, policy = ModelRef(**out["sft"]["model"]), ModelRef(**out["rlhf"]["model"])
    reward = ModelRef(*version_tags(policy)["lifecycle.reward_model"].split("/"))
    assert version_tags(reward)["lifecycle.peft"] == "adapter"
    assert version_tags(reward)["lifecycle.adapter_base"] == sft.uri
    assert adapter_base(local_copy(reward, state / "models")) == sft.uri
    assert version_tags(policy)["lifecycle.peft"] == "merged" and "lifecycle.adapter_base" not in version_tags(policy)
    assert out["rlhf"]["metrics"]["trainable_share"] < 0.5
    assert out["rlhf"]["metrics"]["reward_model/trainable_share"] < 0.5
    evaluation = json.loads((Path(out["evaluate"]["path"]) / "evaluation.json").read_text())
    assert evaluation["models"]["candidate"] == str(policy)
    assert all(m is not None for m in evaluation["per_question"]["reward_margin"]["sft"])  # the reward adapter

    dpo = pipeline(overrides=[*OVERRIDES, "rlhf.method=dpo", "rlhf.dpo.peft={r: 8, register: adapter}"],
                   state_dir=str(state), conf_dir=str(CONF), until="rlhf")["rlhf"]
    dpo_ref = ModelRef(**dpo["model"])
    assert version_tags(dpo_ref)["lifecycle.adapter_base"] == sft.uri
    model, tokenizer = load_causal_lm(local_copy(dpo_ref, state / "models"), state / "models")
    assert model.config.vocab_size == len(tokenizer)

    with_adapter = pipeline(overrides=[*OVERRIDES, SFT_ADAPTER], state_dir=str(state), conf_dir=str(CONF),
                            until="preferences")
    base, adapter = ModelRef(**with_adapter["pretrain"]["model"]), ModelRef(**with_adapter["sft"]["model"])
    assert version_tags(adapter)["lifecycle.peft"] == "adapter"
    assert version_tags(adapter)["lifecycle.adapter_base"] == base.uri
    assert not (local_copy(adapter, state / "models") / "model.safetensors").exists()
    assert not with_adapter["preferences"]["cached"]  # sampled from the adapter version
    assert main(["ask", "What does json.dumps do?", "--model", str(adapter), "--state-dir", str(state),
                 "--conf", str(CONF), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"].startswith(str(adapter))

    with pytest.raises(ConfigError, match=r"rlhf.policy.peft.rank = 8: not a peft.LoraConfig option"):
        pipeline(overrides=[*OVERRIDES, "rlhf.policy.peft.rank=8"], state_dir=str(state), conf_dir=str(CONF),
                 until="rlhf")


@pytest.mark.slow
def test_a_lora_stage_killed_with_kill_9_resumes_from_its_adapter_checkpoint(sft_trained: Path,
                                                                            tmp_path: Path) -> None:
    """`lifecycle run --until sft` with an sft adapter, its process group killed (SIGKILL) once the Trainer sealed
    its first checkpoint, then run again: two processes, about 40 s."""
    state = copy_state(sft_trained, tmp_path / "state")
    before = tuple(committed(state, "sft"))
    cmd = command(state, [*OVERRIDES, SFT_ADAPTER, "sft.trainer.max_steps=20", "sft.trainer.save_steps=10"])
    cmd[cmd.index("--until") + 1] = "sft"
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((state / "checkpoints").glob(f"sft/*/checkpoint-*/{SEAL}")):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no sft checkpoint within 300 s"
        time.sleep(0.02)
    assert list((state / "checkpoints").glob("sft/*/checkpoint-10/adapter_model.safetensors"))  # the adapter only
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tuple(committed(state, "sft")) == before

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = stage_metrics(state, "sft", before)
    assert metrics["sft/resumed"] == 1 and metrics["sft/steps"] == 20
    assert versions(state)["lifecycle-gpt"] == 2  # the chain's SFT version and this adapter, nothing dangling

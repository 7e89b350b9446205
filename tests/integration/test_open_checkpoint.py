"""Starting from an open checkpoint (`pretrain.init`): conf/profiles/open-model.yaml's path, offline from a tiny
checkpoint folder instead of SmolLM2 (registered as the base model untrained, `pretrain.max_steps: 0`, then
LoRA SFT, simulated preferences, a LoRA reward model and a LoRA RLOO policy); a hub id read offline from the
Hugging Face cache, pretrained further. The tokenize stage takes the checkpoint's own tokenizer
(`tokenize.tokenizer: from_model`), adds ChatML's tokens it lacks (the model's embeddings grow to match), and
packs blocks of at most its window."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from lifecycle import names
from lifecycle.hub import checkpoint_digest
from lifecycle.model import load_causal_lm
from lifecycle.registry import local_copy
from lifecycle.store import ArtifactStore
from lifecycle.tokenizer import IM_END, IM_START, load_blocks
from lifecycle.tracking import tracking_uri
from tests.checkpoint_fixtures import cache_as_hub_model, save_tiny_checkpoint
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES

pytestmark = pytest.mark.integration
FROM_MODEL = ["tokenize.tokenizer=from_model", "tokenize.context_length=null"]


def run(state: Path, until: str, *extra: str, profile: str = "default") -> dict:
    from flows.pipeline import pipeline

    return pipeline(profile=profile, overrides=[*OVERRIDES, *FROM_MODEL, *extra], state_dir=str(state),
                    conf_dir=str(CONF), until=until)


def version_tags(state: Path, name: str, version: str = "1") -> dict[str, str]:
    return MlflowClient(tracking_uri(state), tracking_uri(state)).get_model_version(name, version).tags


def test_the_open_model_profile_runs_offline_from_a_tiny_checkpoint(tmp_path: Path) -> None:
    folder = save_tiny_checkpoint(tmp_path / "checkpoint", positions=256)
    state = tmp_path / "state"
    small = ["pretrain.max_steps=0",  # the profile's, over the tiny chain's OVERRIDES
             "pretrain.device=cpu", "sft.device=cpu", "evaluate.device=cpu", "sft.peft.r=8",
             "rlhf.reward.peft.r=8", "rlhf.policy.peft.r=8", "rlhf.policy.rloo.learning_rate=1e-3",
             "preferences.sampling.responses=3", "preferences.export.ties=both"]
    out = run(state, "rlhf", f"pretrain.init={folder}", *small, profile="open-model")

    tokens = Path(out["tokenize"]["path"])
    blocks = load_blocks(tokens)
    assert len(blocks["train"][0]["input_ids"]) == 256  # the checkpoint's window (context_length: null)
    base = ArtifactStore(state / "artifacts").lookup("pretrain", Path(out["pretrain"]["path"]).name)
    assert base is not None
    tags = version_tags(state, "lifecycle-gpt-base")
    assert tags[names.INIT] == str(folder) and tags[names.INIT_SHA256] == checkpoint_digest(folder)

    model, tok = load_causal_lm(local_copy(base.model, tmp_path / "models"))
    assert {IM_START, IM_END} <= set(tok.get_vocab()) and tok.chat_template and "{% generation %}" in tok.chat_template
    assert model.get_input_embeddings().num_embeddings == len(tok) == 322  # 320 of its own + ChatML's two
    original = load_file(str(folder / "model.safetensors"))["transformer.wte.weight"]
    torch.testing.assert_close(model.get_input_embeddings().weight[:320], original)  # max_steps 0: as it was
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"  # it had no padding token: EOS pads

    sft = out["sft"]
    assert sft["metrics"]["eval_loss"] < sft["metrics"]["base_eval_loss"]  # the SFT model learned from that base
    assert 0 < sft["metrics"]["trainable_share"] < 0.5  # LoRA adapters only, merged into the registered version
    assert version_tags(state, "lifecycle-gpt")[names.BASE_MODEL] == str(base.model)
    rlhf = out["rlhf"]["metrics"]
    assert 0 < rlhf["trainable_share"] < 0.5 and 0 < rlhf["reward_model/trainable_share"] < 0.5
    assert version_tags(state, "lifecycle-gpt", "2")[names.STAGE] == "rlhf"


def test_a_hub_checkpoint_is_read_from_the_cache_offline_and_pretrained_further(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    folder = save_tiny_checkpoint(tmp_path / "checkpoint", positions=64)
    commit = cache_as_hub_model(folder, tmp_path / "hub", "tiny-org/tiny-gpt")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    state = tmp_path / "state"
    steps = ["pretrain.max_steps=4", "pretrain.eval_every=0", "pretrain.checkpoint_every=0"]
    out = run(state, "pretrain", "pretrain.init=tiny-org/tiny-gpt", *steps)

    tags = version_tags(state, "lifecycle-gpt-base")
    assert tags[names.INIT] == "tiny-org/tiny-gpt" and tags[names.INIT_REVISION] == commit
    metrics = out["pretrain"]["metrics"]
    assert metrics["steps"] == 4 and metrics["val_bpb"] < metrics["unigram_bpb"] * 3
    trained = load_file(str(next(Path(out["pretrain"]["path"]).rglob("model.safetensors"))))
    original = load_file(str(folder / "model.safetensors"))
    assert not torch.equal(trained["transformer.h.0.mlp.c_fc.weight"], original["transformer.h.0.mlp.c_fc.weight"])

    assert run(state, "pretrain", "pretrain.init=tiny-org/tiny-gpt", *steps)["pretrain"]["path"] == \
        out["pretrain"]["path"]  # the same commit: a cache hit

    newer = cache_as_hub_model(save_tiny_checkpoint(tmp_path / "newer", positions=64, seed=1), tmp_path / "hub",
                               "tiny-org/tiny-gpt", "f" * 40)  # main moved on to another commit
    moved = run(state, "pretrain", "pretrain.init=tiny-org/tiny-gpt", *steps)
    assert moved["pretrain"]["path"] != out["pretrain"]["path"]
    assert version_tags(state, "lifecycle-gpt-base", "2")[names.INIT_REVISION] == newer

"""LoRA on every training stage, on tiny in-process models (CPU): SFT trains only the adapter (the base
weights stay bit-identical) and lowers the held-out loss; the merged model and the registered adapter
(fetched from the registry, its base with it) answer with the PeftModel's logits; a killed LoRA run resumes from
its checkpoint; the reward model, DPO and RLOO train with an adapter (the reference: the adapter disabled); and a
bad `peft` key, or QLoRA without CUDA, fails before any work, naming the key and the value."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from lifecycle.align.dpo import train_dpo
from lifecycle.align.pairs import split_pairs
from lifecycle.align.policy import train_policy
from lifecycle.align.reward import train_reward
from lifecycle.align.reward_model import RewardModel
from lifecycle.align.sft import build_trainer, prepare, sft_lora, train_sft
from lifecycle.config import load_config
from lifecycle.errors import ConfigError
from lifecycle.lora import adapter_base, lora_settings, plain_copy, point_to, save_trained
from lifecycle.model import load_causal_lm
from lifecycle.registry import local_copy, register_model, version_tags
from lifecycle.resume import same_weights
from lifecycle.tracking import setup_mlflow
from tasks.rlhf import check_trainers
from tasks.sft import check_trainer
from tests.unit.test_policy import PROMPTS, even_tokens, tiny
from tests.unit.test_policy import sft_dir as policy_sft_dir  # noqa: F401 - a fixture
from tests.unit.test_reward import CONF, marker_rows
from tests.unit.test_reward import TINY as REWARD_TINY
from tests.unit.test_reward import sft_dir  # noqa: F401 - a fixture
from tests.unit.test_sft import TINY as SFT_TINY
from tests.unit.test_sft import base_dir, documents  # noqa: F401 - fixtures

LORA = "{r: 8, lora_alpha: 16, lora_dropout: 0.0, target_modules: all-linear}"


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_lora_sft_trains_only_the_adapter_and_both_registrations_give_its_logits(
        base_dir: Path, documents: list[dict], tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=SFT_TINY + [f"sft.peft={LORA}", "sft.trainer.learning_rate=1e-2"])
    model, tokenizer, train, held_out = prepare(cfg, base_dir, documents)
    trainer = build_trainer(cfg, model, tokenizer, train, held_out, tmp_path / "ckpt")
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.1  # an untrained random base: LoRA moves it slowly
    base, _ = load_causal_lm(base_dir)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert frozen.keys() == dict(base.named_parameters()).keys()
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())  # the base: bit-identical
    assert all(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)  # B starts at 0

    ids = torch.tensor([tokenizer("What does json.dumps do?")["input_ids"]])
    expected = logits_of(trainer.model, ids)
    adapter = lora_settings(load_config(CONF, overrides=[f"sft.peft={{register: adapter}}"]), "sft", "cpu")
    save_trained(trainer, tmp_path / "adapter", adapter, base_dir, lambda d: load_causal_lm(d)[0])
    tokenizer.save_pretrained(str(tmp_path / "adapter"))
    assert adapter_base(tmp_path / "adapter") == str(base_dir)
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    save_trained(trainer, tmp_path / "merged", sft_lora(cfg), base_dir, lambda d: load_causal_lm(d)[0])
    tokenizer.save_pretrained(str(tmp_path / "merged"))
    merged, _ = load_causal_lm(tmp_path / "merged")
    torch.testing.assert_close(logits_of(merged, ids), expected, rtol=1e-4, atol=1e-4)
    loaded, tok = load_causal_lm(tmp_path / "adapter")  # its base (a folder) + the adapter, merged
    torch.testing.assert_close(logits_of(loaded, ids), expected, rtol=1e-4, atol=1e-4)
    assert tok.chat_template == tokenizer.chat_template


def test_a_killed_lora_sft_run_resumes_from_its_adapter_checkpoint(base_dir: Path, documents: list[dict],
                                                                    tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=SFT_TINY + [f"sft.peft={LORA}", "sft.trainer.max_steps=16",
                                                  "sft.trainer.save_steps=10", "sft.trainer.logging_steps=1"])

    def crash_at_step_12(metrics: dict[str, float], step: int) -> None:
        if step == 12:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_sft(cfg, base_dir, documents, tmp_path / "out1", tmp_path / "ckpt", crash_at_step_12)
    assert (tmp_path / "ckpt" / "checkpoint-10" / "adapter_model.safetensors").is_file()
    seen: list[int] = []
    metrics = train_sft(cfg, base_dir, documents, tmp_path / "out", tmp_path / "ckpt",
                        lambda m, step: seen.append(step)).metrics
    assert metrics["resumed"] == 1 and metrics["steps"] == 16 and min(s for s in seen if s > 0) == 11
    assert 0 < metrics["trainable_share"] < 0.2
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()  # merged: a plain model


def test_a_registered_adapter_loads_with_its_base_from_the_registry(base_dir: Path, documents: list[dict],
                                                                    tmp_path: Path) -> None:
    """What `lifecycle ask`, serving, evaluate and the next stage read: a local copy of the version."""
    experiment = setup_mlflow(tmp_path / "state", "lora-test")
    cfg = load_config(CONF, overrides=SFT_TINY + ["sft.peft={register: adapter}", "sft.trainer.max_steps=4"])
    train_sft(cfg, base_dir, documents, tmp_path / "out", tmp_path / "ckpt")
    with mlflow.start_run(experiment_id=experiment):
        base_ref = register_model(base_dir, "tiny-base", tags={})
        point_to(tmp_path / "out" / "model", base_ref.uri)
        ref = register_model(tmp_path / "out" / "model", "tiny-chat", tags={"lifecycle.base_model": str(base_ref)})
    assert version_tags(ref)["lifecycle.peft"] == "adapter"
    assert version_tags(ref)["lifecycle.adapter_base"] == f"models:/tiny-base/{base_ref.version}"
    models = tmp_path / "models"
    copy = local_copy(ref, models)
    assert sorted(p.name for p in copy.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert same_weights(tmp_path / "out" / "model", copy)

    base, tok = load_causal_lm(base_dir)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "out" / "model"))
    ids = torch.tensor([tok("What does csv.reader do?")["input_ids"]])
    expected = logits_of(peft_model, ids)
    for where in (models, None):  # the registry's models folder (serve, ask), or a temporary one
        model, _ = load_causal_lm(copy, where)
        torch.testing.assert_close(logits_of(model, ids), expected, rtol=1e-4, atol=1e-4)
    assert (models / "tiny-base" / base_ref.version).is_dir()
    start = plain_copy(copy, models)  # what the next stage trains from: full weights in a folder of their own
    assert (start / "model.safetensors").is_file() and plain_copy(copy, models) == start
    model, _ = load_causal_lm(start)
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=1e-4, atol=1e-4)

    # an adapter of that version (as rlhf registers it): two bases deep, each fetched and merged in turn
    second = get_peft_model(model, LoraConfig(r=4, init_lora_weights=False, task_type="CAUSAL_LM"))
    stacked = logits_of(second, ids)
    second.save_pretrained(str(tmp_path / "second"))
    tok.save_pretrained(str(tmp_path / "second"))
    point_to(tmp_path / "second", ref.uri)
    with mlflow.start_run(experiment_id=experiment):
        top = register_model(tmp_path / "second", "tiny-chat", tags={"lifecycle.base_model": str(ref)})
    loaded, _ = load_causal_lm(local_copy(top, models), models)
    torch.testing.assert_close(logits_of(loaded, ids), stacked, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(stacked, expected)


def test_reward_model_with_lora_registers_an_adapter_that_scores_the_same(sft_dir: Path,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    rows = marker_rows(200)
    cfg = load_config(CONF, overrides=REWARD_TINY + ["rlhf.reward.trainer.max_steps=30",
                                                     "rlhf.reward.peft={r: 8, register: adapter}"])
    result = train_reward(cfg, sft_dir, rows, tmp_path, tmp_path / "ckpt")
    assert result.metrics["accuracy"] > 0.6 and result.metrics["trainable_share"] < 0.2
    folder = tmp_path / "reward_model"
    assert adapter_base(folder) == str(sft_dir)
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]  # the head trains in full
    _, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)  # what result.margins were measured on
    assert RewardModel.load(folder).margins(held_out) == pytest.approx(result.margins, abs=1e-4)


def test_dpo_with_lora_uses_the_disabled_adapter_as_reference(sft_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    rows = marker_rows(160, seed=5)
    cfg = load_config(CONF, overrides=REWARD_TINY + [
        "rlhf.dpo.trainer.per_device_train_batch_size=16", "rlhf.dpo.trainer.learning_rate=1e-2",
        "rlhf.dpo.trainer.max_steps=12", "rlhf.dpo.trainer.save_steps=1000", f"rlhf.dpo.peft={LORA}"])
    metrics = train_dpo(cfg, sft_dir, rows, tmp_path, tmp_path / "ckpt").metrics
    assert metrics["margin_after"] > metrics["margin_before"] + 0.5, metrics
    assert 0 < metrics["trainable_share"] < 0.2
    assert (tmp_path / "policy" / "model.safetensors").is_file()


def test_rloo_with_lora_trains_the_adapter_and_measures_kl_to_the_disabled_adapter(
        policy_sft_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=8, learning_rate=1e-2) + [
        f"rlhf.policy.peft={LORA}"])
    result = train_policy(cfg, policy_sft_dir, None, PROMPTS, tmp_path, tmp_path / "ckpt",
                          reward_funcs=[even_tokens])
    metrics = result.metrics
    assert metrics["steps"] == 8 and 0 < metrics["trainable_share"] < 0.2
    assert metrics["kl_max"] > 0 and metrics["kl_max"] == metrics["kl_max"]  # TRL's KL to the reference: not NaN
    trained, _ = load_causal_lm(tmp_path / "policy")
    start, tok = load_causal_lm(policy_sft_dir)
    ids = torch.tensor([tok("What does json load do?")["input_ids"]])
    assert not torch.allclose(logits_of(trained, ids), logits_of(start, ids))


@pytest.mark.parametrize(("setting", "named"), [
    ("sft.peft.rank=8", "sft.peft.rank = 8: not a peft.LoraConfig option"),
    ("sft.peft.register=both", 'sft.peft.register = "both": expected one of merged, adapter'),
    ("sft.peft.task_type=SEQ_CLS", 'sft.peft.task_type = "SEQ_CLS": set by the stage itself (to CAUSAL_LM)'),
    ("sft.peft.load_in_4bit=true", "sft.peft.load_in_4bit = true: QLoRA quantises the base with bitsandbytes, "
                                   "which needs a CUDA GPU"),
    ("sft.peft.load_in_4bit=maybe", 'sft.peft.load_in_4bit = "maybe": expected true or false'),
])
def test_bad_sft_peft_settings_fail_before_any_work(setting: str, named: str, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=[setting, "sft.device=cpu"])
    with pytest.raises(ConfigError) as err:
        check_trainer(cfg, tmp_path)
    assert named in str(err.value) and "[--set" in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("section", ["rlhf.reward", "rlhf.policy"])
def test_bad_rlhf_peft_settings_fail_before_any_work(section: str, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=[f"{section}.peft.lora_alpah=16", "rlhf.method=rloo"])
    with pytest.raises(ConfigError, match=rf"{section}.peft.lora_alpah = 16: not a peft.LoraConfig option "
                                          r"\(did you mean lora_alpha\?\)"):
        check_trainers(cfg, tmp_path)
    dpo = load_config(CONF, overrides=["rlhf.dpo.peft.load_in_4bit=true", "rlhf.method=dpo", "rlhf.device=cpu"])
    with pytest.raises(ConfigError, match="rlhf.dpo.peft.load_in_4bit = true: QLoRA"):
        check_trainers(dpo, tmp_path)


def test_peft_knows_what_to_adapt_in_our_architectures_by_default() -> None:
    """No target_modules: peft's choice for Llama, GPT-2 and the packaged MiniLM encoder (a BERT) reward model,
    whose fresh score head trains in full."""
    from lifecycle.align.reward_model import load_classifier
    from lifecycle.hub import local_checkpoint
    from lifecycle.model import build_model

    def adapted(model: torch.nn.Module) -> set[str]:  # the names of the layers that got a LoRA adapter
        return {n.rpartition(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}

    cfg = load_config(CONF, overrides=[*SFT_TINY, "sft.peft={r: 4}", "rlhf.reward.peft={r: 4}"])
    for arch, targets in (("llama", {"q_proj", "v_proj"}), ("gpt2", {"c_attn"})):
        arch_cfg = cfg.pretrain.model.model_copy(update={"arch": arch})
        model = get_peft_model(build_model(arch_cfg, 64, 32, 1, 0), lora_settings(cfg, "sft", "cpu").config)
        assert adapted(model) == targets
    encoder, _ = load_classifier(local_checkpoint("all-MiniLM-L6-v2"), num_labels=1)
    model = get_peft_model(encoder, lora_settings(cfg, "rlhf.reward", "cpu").config)
    assert adapted(model) == {"query", "value"}
    assert any("classifier" in n and "modules_to_save" in n for n, p in model.named_parameters() if p.requires_grad)

"""QLoRA on a CUDA GPU (skipped elsewhere, and where bitsandbytes is not installed: `pip install
'llm-lifecycle[gpu]'`): `sft.peft.load_in_4bit` loads the tiny base in 4-bit NF4, only the adapter trains, the
held-out loss falls, and the `merged` registration is a full-precision model (the adapter merged into a
full-precision copy of the base) that loads on the CPU with the trained model's logits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lifecycle.align.sft import build_trainer, prepare, sft_lora
from lifecycle.config import load_config
from lifecycle.lora import save_trained
from lifecycle.model import load_causal_lm
from tests.unit.test_reward import CONF
from tests.unit.test_sft import TINY
from tests.unit.test_sft import base_dir, documents  # noqa: F401 - fixtures

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                 reason="needs bitsandbytes (the gpu extra)")]


def test_qlora_sft_trains_a_4bit_base_and_registers_full_precision_weights(base_dir: Path,  # noqa: F811
                                                                           documents: list[dict],  # noqa: F811
                                                                           tmp_path: Path) -> None:
    qlora = "sft.peft={r: 8, lora_alpha: 16, target_modules: all-linear, load_in_4bit: true}"
    cfg = load_config(CONF, overrides=[*TINY, "sft.device=cuda", "sft.trainer.learning_rate=1e-2", qlora])
    model, tokenizer, train, held_out = prepare(cfg, base_dir, documents)
    assert getattr(model, "is_loaded_in_4bit", False)
    trainer = build_trainer(cfg, model, tokenizer, train, held_out, tmp_path / "ckpt")
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.1
    ids = torch.tensor([tokenizer("What does json.dumps do?")["input_ids"]])
    trainer.model.eval()
    with torch.inference_mode():
        expected = trainer.model(input_ids=ids.to(trainer.model.device)).logits.float().cpu()
    save_trained(trainer, tmp_path / "merged", sft_lora(cfg), base_dir, lambda d: load_causal_lm(d)[0])
    tokenizer.save_pretrained(str(tmp_path / "merged"))
    merged, _ = load_causal_lm(tmp_path / "merged")
    assert merged.dtype == torch.float32 and not getattr(merged, "is_loaded_in_4bit", False)
    with torch.inference_mode():
        got = merged(input_ids=ids).logits
    # the 4-bit base against its full-precision original: close, not equal (NF4 rounding of the base weights)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.95

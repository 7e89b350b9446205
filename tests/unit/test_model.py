"""The model is built from config as a plain transformers causal LM: both architectures, SDPA attention,
parameter counts, generation ids, and a save / from_pretrained round trip that gives the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

from lifecycle.config import ModelArchConfig
from lifecycle.errors import ConfigError
from lifecycle.model import build_model, count_params
from tests.pretrain_fixtures import tiny_pretrain_config


def arch(name: str, **changes: object) -> ModelArchConfig:
    return tiny_pretrain_config(model={"arch": name, **changes}).model


@pytest.mark.parametrize(("name", "cls"), [("llama", LlamaForCausalLM), ("gpt2", GPT2LMHeadModel)])
def test_builds_a_transformers_causal_lm_that_round_trips(tmp_path: Path, name: str, cls: type) -> None:
    model = build_model(arch(name), vocab_size=320, context_length=33, eos_token_id=1, pad_token_id=0)
    assert isinstance(model, cls)
    assert model.config._attn_implementation == "sdpa"
    assert model.generation_config.eos_token_id == 1 and model.generation_config.pad_token_id == 0
    assert 50_000 < count_params(model)["total"] < 500_000  # "a few hundred thousand" at the small end
    x = torch.randint(0, 320, (2, 16))
    model.eval()
    logits = model(input_ids=x).logits  # (2, 16, 320)
    assert logits.shape == (2, 16, 320)

    model.save_pretrained(str(tmp_path))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    loaded.eval()
    assert type(loaded) is cls
    torch.testing.assert_close(loaded(input_ids=x).logits, logits)


def test_gpt2_small_config_has_124m_parameters() -> None:
    cfg = arch("gpt2", n_layer=12, n_head=12, n_kv_head=12, d_model=768, d_ff=3072)
    with torch.device("meta"):  # no memory, no init time
        model = build_model(cfg, vocab_size=50257, context_length=1024, eos_token_id=50256, pad_token_id=None)
    assert round(count_params(model)["total"] / 1e6, 2) == 124.44


def test_param_counts_separate_embeddings_from_matmul_weights() -> None:
    tied = build_model(arch("llama", tie_embeddings=True), 320, 33, 1, 0)
    untied = build_model(arch("llama", tie_embeddings=False), 320, 33, 1, 0)
    t, u = count_params(tied), count_params(untied)
    assert t["non_embedding"] == u["non_embedding"]
    assert u["total"] == t["total"] + 320 * 64  # the extra LM head
    assert t["matmul"] == u["matmul"] == t["non_embedding"] + 320 * 64


def test_config_rejects_heads_that_do_not_divide() -> None:
    with pytest.raises(Exception, match="d_model=100 must be a multiple of n_head=3"):
        arch("llama", d_model=100, n_head=3, n_kv_head=3)
    with pytest.raises(Exception, match="n_head=4 must be a multiple of n_kv_head=3"):
        arch("llama", n_kv_head=3)


def test_pretrain_section_errors_name_the_key(conf_dir: Path) -> None:
    from lifecycle.config import load_config

    with pytest.raises(ConfigError, match=r"pretrain.model.n_layer = 0"):
        load_config(conf_dir, overrides=["pretrain.model.n_layer=0"])
    with pytest.raises(ConfigError, match="batch_size=30 must be a multiple of micro_batch_size"):
        load_config(conf_dir, overrides=["pretrain.batch_size=30"])

"""The minimal-GPT reference of `lifecycle bench pretrain` (bench/minimal_gpt.py): the same architecture and
parameter count as our Hugging Face model (exactly: no documented difference), the same function once it
holds the same weights, it learns, and the benchmark reports both ratios (no timing assertions)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from lifecycle.bench import add_pretrain_args
from lifecycle.bench.pretrain import bench_pretrain, load_minimal_gpt
from lifecycle.config import ModelArchConfig
from lifecycle.model import build_model
from tests.pretrain_fixtures import ROOT

mg = load_minimal_gpt()
VOCAB, CONTEXT = 96, 17
SHAPES = [("llama", 4, True), ("llama", 2, False), ("gpt2", 4, True)]  # arch, key/value heads, tied embeddings


def pair(arch: str, kv_heads: int, tied: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    ff = 4 * 32 if arch == "gpt2" else 88
    arch_cfg = ModelArchConfig(arch=arch, n_layer=2, n_head=4, n_kv_head=kv_heads, d_model=32, d_ff=ff, dropout=0.0,
                               tie_embeddings=tied, rope_theta=10000.0, init_std=0.02)
    torch.manual_seed(0)
    ours = build_model(arch_cfg, VOCAB, CONTEXT, 0, None)
    minimal = mg.MinimalGPT(mg.GPTConfig(VOCAB, CONTEXT, 2, 4, kv_heads, 32, ff, arch, tied))
    return ours, minimal


@pytest.mark.parametrize(("arch", "kv_heads", "tied"), SHAPES)
def test_same_parameter_count_and_same_function_as_our_model(arch: str, kv_heads: int, tied: bool) -> None:
    ours, minimal = pair(arch, kv_heads, tied)
    assert sum(p.numel() for p in minimal.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randint(0, VOCAB, (3, CONTEXT - 1))
    before = minimal(x)
    mg.load_hf_weights(minimal, ours)
    expected = ours(input_ids=x, use_cache=False).logits
    assert not torch.allclose(before, expected, atol=1e-3)  # the copy is what makes them agree
    torch.testing.assert_close(minimal(x), expected, atol=1e-5, rtol=1e-4)


def test_minimal_gpt_loss_falls_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = mg.MinimalGPT(mg.GPTConfig(VOCAB, CONTEXT, 2, 4, 4, 32, 88))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, VOCAB, (4, CONTEXT))
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)  # uniform at initialisation
    assert losses[-1] < losses[0] - 1.0


def test_bench_reports_tokens_per_s_and_both_ratios(two_threads: None) -> None:
    parser = argparse.ArgumentParser()
    add_pretrain_args(parser)
    args = parser.parse_args(["--layers", "1", "--heads", "2", "--dim", "32", "--context", "16", "--batch", "2",
                              "--steps", "2", "--vocab-size", "64", "--device", "cpu", "--warmup", "1",
                              "--rounds", "2", "--threads", "1"])
    threads = torch.get_num_threads()
    result = bench_pretrain(args, ROOT / "conf")
    for key in ("tokens_per_s", "reference_tokens_per_s", "minimal_tokens_per_s", "ratio_vs_reference",
                "ratio_vs_minimal"):
        assert result[key] > 0, key
    assert result["minimal_params"] == result["params"]
    assert result["threads"] == 1 and torch.get_num_threads() == threads  # set for the run, then restored
    assert {k: len(v) for k, v in result["round_tokens_per_s"].items()} == {"ours": 2, "reference": 2, "minimal": 2}

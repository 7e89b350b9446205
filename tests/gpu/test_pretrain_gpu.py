"""Pretraining on a CUDA GPU (run by bench/gpu_check.sh on a lent GPU machine; skipped elsewhere):
bf16 autocast + torch.compile + SDPA train a tiny model, MFU is reported from the GPU table, and the
benchmark runs with both loops."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from lifecycle.bench import add_pretrain_args
from lifecycle.train.flops import detect_peak_flops
from lifecycle.train.pretrain import train
from tests.pretrain_fixtures import ROOT, make_tokenized, tiny_pretrain_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_compiled_training_learns_on_gpu(tmp_path: Path) -> None:
    data = make_tokenized(tmp_path / "data")
    cfg = tiny_pretrain_config(max_steps=60, device="cuda", dtype="auto", compile="auto", deterministic=False,
                               num_threads=None, checkpoint_every=30)
    metrics = train(cfg, 1337, data, tmp_path / "out", tmp_path / "ckpt")
    losses = json.loads((tmp_path / "out" / "train_log.json").read_text())["losses"]
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 1.0
    assert metrics["val_bpb"] < metrics["unigram_bpb"]
    assert metrics["mem_gb"] > 0 and metrics["tokens_per_s"] > 0
    resumed = train(cfg.model_copy(update={"max_steps": 60}), 1337, data, tmp_path / "out2", tmp_path / "ckpt")
    assert resumed["resumed_from_step"] == 30  # the GPU run checkpoints and resumes too


def test_peak_flops_of_this_gpu_is_known() -> None:
    peak, source = detect_peak_flops(torch.device("cuda", 0), "bf16")
    assert peak and peak > 1e13, source


def test_benchmark_runs_bf16_compiled_with_the_reference_loop() -> None:
    from lifecycle.bench.pretrain import bench_pretrain

    parser = argparse.ArgumentParser()
    add_pretrain_args(parser)
    args = parser.parse_args(["--layers", "2", "--heads", "4", "--dim", "128", "--context", "128", "--batch", "8",
                              "--steps", "5", "--vocab-size", "512", "--device", "cuda", "--dtype", "bf16",
                              "--compile", "--warmup", "3", "--rounds", "1"])
    result = bench_pretrain(args, ROOT / "conf")
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0 and result["ratio_vs_reference"] > 0

"""`lifecycle bench pretrain` (flags in lifecycle/bench/__init__.py): training throughput of the pretraining loop on random tokens, next to the
leanest reference loop (forward, cross-entropy, backward, AdamW step; nothing else) on the same model,
batch, device and precision. Prints one JSON line.

    lifecycle bench pretrain --layers 4 --heads 4 --dim 128 --context 128 --batch 16 --steps 30 \\
        --vocab-size 2048 --device cpu --dtype fp32
    lifecycle bench pretrain --layers 12 --heads 12 --dim 768 --context 1024 --batch 16 --steps 50 \\
        --vocab-size 50304 --arch gpt2 --device cuda --dtype bf16 --compile

Our loop is the real one (lifecycle.train.trainer.Trainer.step fed by lifecycle.train.data.BatchOrder,
built from conf/pretrain.yaml with the flags' sizes), synchronised once per timed round like the
training loop between log lines. Warm-up steps (and compilation) are excluded from timing; both loops
run `--rounds` times, alternating, and each loop's best round counts (the
least disturbed by whatever else the machine is doing).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lifecycle.config import PretrainConfig, load_config
from lifecycle.model import build_model, count_params
from lifecycle.train.data import BatchOrder
from lifecycle.train.distributed import DistInfo, resolve_device
from lifecycle.train.flops import detect_peak_flops, flops_per_token, mfu
from lifecycle.train.trainer import build_trainer

log = logging.getLogger("lifecycle.bench")


def bench_config(args: argparse.Namespace, conf_dir: Path) -> PretrainConfig:
    base = load_config(conf_dir, args.profile).pretrain.model_dump(mode="json")
    arch = args.arch or base["model"]["arch"]
    ff = args.ff or (4 * args.dim if arch == "gpt2" else 8 * -(-8 * args.dim // 3 // 8))  # LLaMA: 8/3 d, x8
    base["model"] |= {"arch": arch, "n_layer": args.layers, "n_head": args.heads, "n_kv_head": args.heads,
                      "d_model": args.dim, "d_ff": ff}
    base |= {"batch_size": args.batch, "micro_batch_size": args.micro_batch or args.batch, "device": args.device,
             "dtype": args.dtype, "compile": args.compile, "num_threads": args.threads,
             "max_steps": args.warmup + args.rounds * args.steps, "distributed": base["distributed"] | {"nproc": 1}}
    return PretrainConfig.model_validate(base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(cfg: PretrainConfig, args: argparse.Namespace, dist: DistInfo, blocks: np.ndarray):
    """A generator: each next() runs one timed round of the real loop, yielding (seconds, last loss)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, args.vocab_size, args.context + 1, 0, None)
    trainer = build_trainer(cfg, model, dist)
    order = BatchOrder(len(blocks), cfg.batch_size, seed=0)
    step = 0

    def steps(n: int) -> float:
        nonlocal step
        pending = []
        for _ in range(n):
            loss, _ = trainer.step(order.micro_batches(blocks, step, 0, 1, cfg.micro_batch_size))
            pending.append(loss)
            step += 1
        return float(torch.stack(pending)[-1])  # one synchronisation, as at a log line

    steps(args.warmup)
    while True:
        _sync(dist.device)
        t0 = time.perf_counter()
        loss = steps(args.steps)
        yield time.perf_counter() - t0, loss


def run_reference(cfg: PretrainConfig, args: argparse.Namespace, dist: DistInfo, blocks: np.ndarray):
    """The leanest loop: tensors already on the device, plain AdamW, no clipping/schedule/accumulation."""
    device = dist.device
    torch.manual_seed(0)
    model = build_model(cfg.model, args.vocab_size, args.context + 1, 0, None).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=device.type == "cuda")
    fwd = torch.compile(model) if args.compile else model
    batches = torch.from_numpy(blocks[: cfg.batch_size * 4]).long().to(device).split(cfg.batch_size)
    use_bf16 = args.dtype == "bf16"

    def steps(n: int) -> float:
        for i in range(n):
            x = batches[i % len(batches)]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = fwd(input_ids=x[:, :-1], use_cache=False).logits
                loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    steps(args.warmup)
    while True:
        _sync(device)
        t0 = time.perf_counter()
        loss = steps(args.steps)
        yield time.perf_counter() - t0, loss


def bench_pretrain(args: argparse.Namespace, conf_dir: Path) -> dict[str, float | str]:
    cfg = bench_config(args, conf_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype == "bf16" and resolve_device(args.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(args.device))
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, args.vocab_size, size=(max(cfg.batch_size * 8, 64), args.context + 1))
    loops = {"ours": run_ours(cfg, args, dist, blocks)}
    if not args.no_reference:
        loops["reference"] = run_reference(cfg, args, dist, blocks)
    times: dict[str, list[float]] = {k: [] for k in loops}
    last: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            seconds, last[name] = next(loop)
            times[name].append(seconds)
    tokens = cfg.batch_size * args.context * args.steps
    model = build_model(cfg.model, args.vocab_size, args.context + 1, 0, None)
    sizes = count_params(model)
    fpt = flops_per_token(sizes["matmul"], cfg.model.n_layer, cfg.model.d_model, args.context)
    peak, source = detect_peak_flops(dist.device, args.dtype, cfg.peak_flops)
    ours = tokens / min(times["ours"])
    result: dict[str, float | str] = {
        "tokens_per_s": round(ours, 1), "step_ms": round(1000 * min(times["ours"]) / args.steps, 2),
        "mfu": round(mfu(fpt, ours, peak), 4), "final_loss": round(last["ours"], 4), "params": sizes["total"],
        "device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": args.dtype, "compile": args.compile,
        "arch": cfg.model.arch, "peak_flops": peak or 0.0, "peak_source": source, "torch": torch.__version__}
    if "reference" in times:
        ref = tokens / min(times["reference"])
        result |= {"reference_tokens_per_s": round(ref, 1), "ratio_vs_reference": round(ours / ref, 3)}
    return result

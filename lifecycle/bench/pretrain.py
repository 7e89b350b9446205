"""`lifecycle bench pretrain` (flags in lifecycle/bench/__init__.py): training throughput of the pretraining loop on
random tokens next to two reference loops, on the same batches, device, precision and threads. Prints one JSON line.

- ours: the real loop (lifecycle.train.trainer.Trainer.step fed by lifecycle.train.data.BatchOrder, built from
  conf/pretrain.yaml with the flags' sizes), synchronised once per timed round like the training loop between
  log lines;
- reference: the leanest loop (forward, cross-entropy, backward, AdamW step; batches already on the device;
  nothing else) around the same Hugging Face model;
- minimal: the same leanest loop around bench/minimal_gpt.py, a plain-PyTorch GPT of the same architecture and
  parameter count, so the Hugging Face model's own overhead shows too.

    lifecycle bench pretrain --layers 4 --heads 4 --dim 128 --context 64 --batch 12 --steps 5 --rounds 30 \\
        --vocab-size 2048 --device cpu --dtype fp32 --threads 2            # add --compile for torch.compile
    lifecycle bench pretrain --layers 12 --heads 12 --dim 768 --context 1024 --batch 16 --steps 50 \\
        --vocab-size 50304 --arch gpt2 --device cuda --dtype bf16 --compile

Warm-up steps (and compilation, timed as `warmup_s`) are excluded; then the loops run `--rounds` timed rounds
each, alternating, so a busy neighbour slows all of them alike. Tokens/s are each loop's median round; the
ratios are medians of the per-round ratios (rounds next to each other in time).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifecycle.config import PretrainConfig, load_config
from lifecycle.errors import LifecycleError
from lifecycle.model import build_model, count_params
from lifecycle.train.data import BatchOrder
from lifecycle.train.distributed import DistInfo, resolve_device
from lifecycle.train.flops import detect_peak_flops, flops_per_token, mfu
from lifecycle.train.trainer import build_trainer

log = logging.getLogger("lifecycle.bench")
MINIMAL_GPT = Path(__file__).resolve().parents[2] / "bench" / "minimal_gpt.py"
Loop = Iterator[tuple[float, float]]  # yields (seconds, last loss): first the warm-up, then one per timed round


def load_minimal_gpt() -> ModuleType:
    """bench/minimal_gpt.py of this checkout (a script folder, not part of the installed package)."""
    if not MINIMAL_GPT.is_file():
        raise LifecycleError(f"{MINIMAL_GPT} not found: the minimal-GPT reference needs a source checkout "
                             "(or pass --no-minimal)")
    if "minimal_gpt" not in sys.modules:  # dataclasses look their module up there
        spec = importlib.util.spec_from_file_location("minimal_gpt", MINIMAL_GPT)
        sys.modules["minimal_gpt"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["minimal_gpt"])
    return sys.modules["minimal_gpt"]


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


def _timed(steps: Callable[[int], float], args: argparse.Namespace, device: torch.device) -> Loop:
    """Run `steps(n)` (returns the last loss) for the warm-up, then once per round; yield (seconds, loss)."""
    n = args.warmup
    while True:
        _sync(device)
        t0 = time.perf_counter()
        loss = steps(n)
        _sync(device)
        yield time.perf_counter() - t0, loss
        n = args.steps


def run_ours(cfg: PretrainConfig, args: argparse.Namespace, dist: DistInfo, blocks: np.ndarray) -> Loop:
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

    return _timed(steps, args, dist.device)


def run_bare(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], cfg: PretrainConfig,
             args: argparse.Namespace, device: torch.device, batches: list[torch.Tensor]) -> Loop:
    """The leanest loop: batches already on the device, one AdamW group, no clipping/schedule/accumulation."""
    opt = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                  weight_decay=opt.weight_decay, fused=True)
    fwd = torch.compile(model) if args.compile else model
    use_bf16 = args.dtype == "bf16"

    def steps(n: int) -> float:
        for i in range(n):
            x = batches[i % len(batches)]  # (B, T + 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = forward(fwd, x[:, :-1])  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return _timed(steps, args, device)


def build_minimal(cfg: PretrainConfig, args: argparse.Namespace) -> nn.Module:
    """bench/minimal_gpt.py's model with our model's sizes (the same parameter count)."""
    mg, m = load_minimal_gpt(), cfg.model
    return mg.MinimalGPT(mg.GPTConfig(vocab_size=args.vocab_size, context=args.context + 1, n_layer=m.n_layer,
                                      n_head=m.n_head, n_kv_head=m.n_kv_head, d_model=m.d_model, d_ff=m.d_ff,
                                      arch=m.arch, tie_embeddings=m.tie_embeddings, rope_theta=m.rope_theta,
                                      init_std=m.init_std))


def build_loops(cfg: PretrainConfig, args: argparse.Namespace, dist: DistInfo,
                blocks: np.ndarray) -> tuple[dict[str, Loop], int | None]:
    """The loops to compare (each seeded alike) and the minimal GPT's parameter count."""
    device = dist.device
    order = BatchOrder(len(blocks), cfg.batch_size, seed=0)  # the batches our loop sees first, pre-loaded
    batches = [torch.from_numpy(blocks[order.global_indices(s)]).long().to(device) for s in range(8)]
    loops = {"ours": run_ours(cfg, args, dist, blocks)}
    minimal_params = None
    if not args.no_reference:
        torch.manual_seed(0)
        model = build_model(cfg.model, args.vocab_size, args.context + 1, 0, None).to(device)
        loops["reference"] = run_bare(model, lambda m, x: m(input_ids=x, use_cache=False).logits, cfg, args,
                                      device, batches)
    if not args.no_minimal:
        torch.manual_seed(0)
        model = build_minimal(cfg, args).to(device)
        minimal_params = sum(p.numel() for p in model.parameters())
        loops["minimal"] = run_bare(model, lambda m, x: m(x), cfg, args, device, batches)
    return loops, minimal_params


def bench_pretrain(args: argparse.Namespace, conf_dir: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)  # explicit, and reported
    try:
        return _bench(args, conf_dir)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests) keep their setting


def _bench(args: argparse.Namespace, conf_dir: Path) -> dict:
    cfg = bench_config(args, conf_dir)
    if args.dtype == "bf16" and resolve_device(args.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(args.device))
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, args.vocab_size, size=(max(cfg.batch_size * 8, 64), args.context + 1))
    load_before = os.getloadavg()[0]
    loops, minimal_params = build_loops(cfg, args, dist, blocks)
    warmup = {name: next(loop)[0] for name, loop in loops.items()}  # compilation happens here
    times: dict[str, list[float]] = {k: [] for k in loops}
    last: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            seconds, last[name] = next(loop)
            times[name].append(seconds)
    tokens = cfg.batch_size * args.context * args.steps
    rates = {k: [tokens / s for s in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    sizes = count_params(build_model(cfg.model, args.vocab_size, args.context + 1, 0, None))
    fpt = flops_per_token(sizes["matmul"], cfg.model.n_layer, cfg.model.d_model, args.context)
    peak, source = detect_peak_flops(dist.device, args.dtype, cfg.peak_flops)
    result: dict = {
        "tokens_per_s": round(median["ours"], 1),
        "step_ms": round(1000 * statistics.median(times["ours"]) / args.steps, 2),
        "mfu": round(mfu(fpt, median["ours"], peak), 4), "final_loss": round(last["ours"], 4), "params": sizes["total"],
        "device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": args.dtype, "compile": args.compile, "arch": cfg.model.arch,
        "shape": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "ff": cfg.model.d_ff,
                  "context": args.context, "batch": args.batch, "vocab": args.vocab_size},
        "peak_flops": peak or 0.0, "peak_source": source, "torch": torch.__version__}
    for name in ("reference", "minimal"):
        if name in rates:
            per_round = [a / b for a, b in zip(rates["ours"], rates[name])]
            result |= {f"{name}_tokens_per_s": round(median[name], 1), f"{name}_final_loss": round(last[name], 4),
                       f"ratio_vs_{name}": round(statistics.median(per_round), 3)}
    if minimal_params is not None:
        result["minimal_params"] = minimal_params
    # the warm-up minus as many steady steps; a loop compiled after another one of the same model class
    # reuses its code (the reference after ours), so only the first of them shows the full compile time
    steady = {k: args.warmup * statistics.median(times[k]) / args.steps for k in loops}
    result |= {"warmup_s": {k: round(v, 2) for k, v in warmup.items()},
               "compile_s": {k: round(warmup[k] - steady[k], 2) for k in loops} if args.compile else None,
               "rounds": args.rounds, "steps": args.steps, "warmup_steps": args.warmup,
               "round_tokens_per_s": {k: [round(r) for r in v] for k, v in rates.items()},
               "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return result

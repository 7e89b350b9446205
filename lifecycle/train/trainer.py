"""One optimizer step of the pretraining loop and what it is built from: the model on its device (wrapped
for DDP/FSDP, compiled on GPU), AdamW with decay/no-decay groups, warmup + cosine schedule, bf16
autocast on GPU, gradient accumulation and clipping. The pretrain loop and the benchmark share it, so
the benchmark measures the loop that trains the models.

    trainer = build_trainer(cfg.pretrain, model, dist)
    loss, grad_norm = trainer.step(micro_batches)     # list of (micro, T) token blocks
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifecycle.config import PretrainConfig
from lifecycle.train.distributed import DistInfo, set_grad_sync, wrap_model

log = logging.getLogger("lifecycle.train")


def lm_loss(model: nn.Module, blocks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of a block: tokens 0..T-2 predict tokens 1..T-1."""  # blocks: (B, T)
    logits = model(input_ids=blocks[:, :-1], use_cache=False).logits  # (B, T-1, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), blocks[:, 1:].flatten(), reduction=reduction)


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `max_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices; not norms, biases or embeddings (decaying them only hurts)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_dtype(dtype: str, device: torch.device) -> str:
    if dtype == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return dtype


@dataclass
class Trainer:
    model: nn.Module  # what the forward pass runs: maybe DDP/FSDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dist: DistInfo
    dtype: str  # "bf16" | "fp32"
    grad_clip: float
    accumulation: int

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, micro_batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward every micro-batch, then one clipped AdamW step. Returns (mean loss, grad norm)
        as device tensors, so the caller decides when to synchronise."""
        device, n = self.dist.device, len(micro_batches)
        total = torch.zeros((), device=device)
        for i, blocks in enumerate(micro_batches):
            set_grad_sync(self.model, i == n - 1)
            with self.autocast():
                loss = lm_loss(self.model, blocks.to(device, non_blocking=True))
            (loss / n).backward()
            total += loss.detach()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / n, norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def build_trainer(cfg: PretrainConfig, model: nn.Module, dist: DistInfo) -> Trainer:
    """Move, wrap and compile `model`; build its optimizer and schedule from `cfg`."""
    device = dist.device
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    model = wrap_model(model.to(device), cfg.distributed.strategy, dist)
    compile_ = cfg.compile if cfg.compile != "auto" else device.type == "cuda"
    opt = cfg.optim
    # fused on CPU too: 0.5 ms against 2.4 ms per step for the quickstart model (docs/BENCHMARKS.md)
    optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=opt.lr, betas=(opt.beta1, opt.beta2),
                                  eps=opt.eps, fused=True)
    schedule: Callable[[int], float] = functools.partial(lr_factor, warmup=opt.warmup_steps, max_steps=cfg.max_steps,
                                                         min_ratio=opt.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if compile_:
        model = torch.compile(model)
    accumulation = cfg.batch_size // (cfg.micro_batch_size * dist.world_size)
    log.info("trainer: %s, %s, compile %s, %s, accumulation %d x micro-batch %d x %d processes",
             device, dtype, compile_, cfg.distributed.strategy if dist.enabled else "single process",
             accumulation, cfg.micro_batch_size, dist.world_size)
    return Trainer(model=model, optimizer=optimizer, scheduler=scheduler, dist=dist, dtype=dtype,
                   grad_clip=opt.grad_clip, accumulation=accumulation)

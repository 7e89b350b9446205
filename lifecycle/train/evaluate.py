"""Evaluation during pretraining: mean next-token loss over (part of) the validation blocks, sharded over
ranks and summed, and greedy sample continuations of a few prompts.

    loss = evaluate_loss(trainer, val_blocks, limit=None, micro_batch_size=16)   # nats per token
    texts = sample_texts(trainer, tok, ["def "], max_new_tokens=32, strategy="ddp")
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lifecycle.train.data import eval_shards
from lifecycle.train.distributed import all_reduce_sum, unwrap
from lifecycle.train.trainer import Trainer, lm_loss


@torch.no_grad()
def evaluate_loss(trainer: Trainer, blocks: np.ndarray, limit_batches: int | None, micro_batch_size: int) -> float:
    """Mean loss (nats/token) over the first `limit_batches` micro-batches of `blocks` (all when None)."""
    dist, model = trainer.dist, trainer.model
    limit = None if limit_batches is None else limit_batches * micro_batch_size
    batches = eval_shards(blocks, limit, dist.rank, dist.world_size, micro_batch_size)
    # FSDP's forward is a collective: every rank runs as many forward passes as the busiest one
    n_total = len(blocks) if limit is None else min(limit, len(blocks))
    rounds = math.ceil(math.ceil(n_total / dist.world_size) / micro_batch_size)
    totals = torch.zeros(2, dtype=torch.float64, device=dist.device)  # (loss sum, tokens)
    model.eval()
    try:
        for i in range(rounds if dist.enabled else len(batches)):
            x = (batches[i] if i < len(batches) else torch.from_numpy(blocks[:1].astype(np.int64))).to(dist.device)
            with trainer.autocast():
                loss = lm_loss(model, x, reduction="sum")
            if i < len(batches):
                totals += torch.stack([loss.double(), torch.tensor(x[:, 1:].numel(), device=dist.device).double()])
    finally:
        model.train()
    all_reduce_sum(totals, dist)
    return float(totals[0] / totals[1])


@torch.no_grad()
def sample_texts(trainer: Trainer, tok: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int,
                 strategy: str) -> list[str]:
    """Greedy continuations (no randomness, so sampling never shifts the training RNG streams)."""
    dist = trainer.dist
    if not prompts or (not dist.is_main and not (dist.enabled and strategy == "fsdp")):
        return []
    model = unwrap(trainer.model)
    model.eval()
    texts = []
    try:
        for prompt in prompts:
            ids = [tok.eos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]  # as if a new document
            x = torch.tensor([ids], device=dist.device)
            room = model.config.max_position_embeddings  # gpt2: an alias of n_positions
            with trainer.autocast():
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                     max_new_tokens=max(1, min(max_new_tokens, room - len(ids))),
                                     do_sample=False, pad_token_id=tok.pad_token_id)
            texts.append(prompt + tok.decode(out[0, len(ids):], skip_special_tokens=True))
    finally:
        model.train()
    return texts

"""Pretraining data: the tokenize stage's packed blocks as (n_blocks, context) arrays, a deterministic
batch order sharded by rank, and the tokenizer-independent yardstick (bits per byte, unigram baseline).

The batch of optimizer step s is a pure function of (seed, s): position p = s * batch + i of an endless
stream of epochs, each a fresh permutation seeded by (seed, epoch). Rank r takes the r-th contiguous
slice of it and cuts it into micro-batches, so N processes with micro-batch B/N see exactly the blocks
one process with batch B sees, and a resumed run only needs the step number to continue.

    order = BatchOrder(n_blocks=len(train), batch_size=32, seed=1337)
    for x in order.micro_batches(train, step, rank=0, world_size=1, micro_batch_size=16): ...  # x: (16, T)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import datasets
import numpy as np
import torch

from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.train")


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """The `split` blocks of a tokenize output as an (n_blocks, context) integer array (memory-mapped Arrow)."""
    path = Path(data_dir) / "blocks"
    if not path.is_dir():
        raise LifecycleError(f"pretrain: {path} not found; expected the tokenize stage's output (blocks/, tokenizer/)")
    ds = datasets.load_from_disk(str(path))[split]
    if len(ds) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    flat = ds.data.table.column("input_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(ds), -1)


def load_stats(data_dir: Path) -> dict[str, float]:
    path = Path(data_dir) / "stats.json"
    try:
        stats = json.loads(path.read_text())
        _ = stats["validation_bytes"], stats["validation_tokens"]
    except (OSError, ValueError, KeyError) as err:
        raise LifecycleError(f"pretrain: {path} must hold validation_bytes and validation_tokens ({err})") from None
    return stats


class BatchOrder:
    """Which blocks each optimizer step trains on: deterministic from (seed, step), sharded by rank."""

    def __init__(self, n_blocks: int, batch_size: int, seed: int) -> None:
        if n_blocks < 1:
            raise LifecycleError("pretrain: the train split has no blocks")
        self.n, self.batch, self.seed = n_blocks, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        """Block indices of step `step`'s whole batch, all ranks together."""  # (batch,)
        pos = np.arange(step * self.batch, (step + 1) * self.batch)
        epochs, offsets = pos // self.n, pos % self.n
        out = np.empty(self.batch, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._perm(int(epoch))[offsets[mask]]
        return out

    def micro_batches(self, blocks: np.ndarray, step: int, rank: int, world_size: int,
                      micro_batch_size: int) -> list[torch.Tensor]:
        per_rank = self.batch // world_size
        mine = self.global_indices(step)[rank * per_rank:(rank + 1) * per_rank]
        return [torch.from_numpy(blocks[mine[i:i + micro_batch_size]].astype(np.int64))
                for i in range(0, per_rank, micro_batch_size)]  # each (micro, T)

    def epoch(self, step: int) -> float:
        return step * self.batch / self.n


def eval_shards(blocks: np.ndarray, limit: int | None, rank: int, world_size: int,
                micro_batch_size: int) -> list[torch.Tensor]:
    """This rank's micro-batches of the first `limit` validation blocks (all of them when None)."""
    chosen = blocks if limit is None else blocks[:limit]
    per_rank = math.ceil(len(chosen) / world_size)
    mine = chosen[rank * per_rank:(rank + 1) * per_rank]
    return [torch.from_numpy(mine[i:i + micro_batch_size].astype(np.int64))
            for i in range(0, len(mine), micro_batch_size)]


def bits_per_byte(loss_nats: float, stats: dict[str, float]) -> float:
    """Nats per token -> bits per UTF-8 byte of the validation text (comparable across tokenizers)."""
    return loss_nats * stats["validation_tokens"] / stats["validation_bytes"] / math.log(2)


def unigram_loss(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on the validation targets of an add-one-smoothed unigram model fitted
    on the train blocks: the score of a model that learned token frequencies and nothing else."""
    counts = np.bincount(train.ravel(), minlength=vocab_size).astype(np.float64)
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    targets = valid[:, 1:].ravel()  # the positions the model is scored on
    return float(-logp[targets].mean())

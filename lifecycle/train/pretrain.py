"""Pretrain a decoder-only transformer from scratch on the tokenize stage's blocks (resumable).

Periodic validation loss, bits per byte and samples; atomic resumable checkpoints; metrics to MLflow
(rank 0 only). Runs in-process (the pretrain task), or one process per device under torchrun:

    python -m lifecycle.train.pretrain --data TOKENIZE_OUT --config CONFIG.json --out OUT --checkpoints CKPT
    torchrun --standalone --nproc_per_node 2 -m lifecycle.train.pretrain --data ... (same flags)

CONFIG.json (or the same JSON inline) is {"seed": 1337, "pretrain": {<the pretrain config section>}}.
Re-running the same command after a crash resumes from the newest checkpoint in CKPT. OUT receives
model/ (model + tokenizer, `from_pretrained`-ready), metrics.json and train_log.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lifecycle.config import PretrainConfig
from lifecycle.errors import LifecycleError
from lifecycle.hub import SCRATCH, fetch_checkpoint
from lifecycle.model import build_model, count_params, depth_and_width, load_checkpoint_model
from lifecycle.progress import progress
from lifecycle.train.checkpoint import latest_checkpoint, load_checkpoint, model_state, save_checkpoint
from lifecycle.train.data import BatchOrder, bits_per_byte, load_split, load_stats, unigram_loss
from lifecycle.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, unwrap
from lifecycle.train.evaluate import evaluate_loss, sample_texts
from lifecycle.train.flops import detect_peak_flops, flops_per_token, mfu
from lifecycle.train.trainer import Trainer, build_trainer

log = logging.getLogger("lifecycle.train")
MetricsHook = Callable[[dict[str, float], int], None]
TextHook = Callable[[str, str], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_runtime(cfg: PretrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB, peak RSS


def train(cfg: PretrainConfig, seed: int, data_dir: Path, out_dir: Path, ckpt_dir: Path,
          on_metrics: MetricsHook | None = None, on_text: TextHook | None = None) -> dict[str, float]:
    """Pretrain (or resume) until cfg.max_steps; write out_dir/model and metrics; return the metrics."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    set_runtime(cfg)
    dist = init_distributed(cfg.device, cfg.distributed.backend)
    try:
        return _train(cfg, seed, Path(data_dir), Path(out_dir), Path(ckpt_dir), dist, on_metrics, on_text)
    finally:
        cleanup(dist)
        torch.set_num_threads(threads)  # in-process runs leave the caller's settings as they were
        torch.use_deterministic_algorithms(deterministic)


@dataclass
class Run:
    """Everything one pretraining run works with, set up and (when a checkpoint exists) resumed."""

    cfg: PretrainConfig
    dist: DistInfo
    tok: PreTrainedTokenizerBase
    stats: dict[str, float]
    train_blocks: np.ndarray  # (n_train, T)
    val_blocks: np.ndarray  # (n_val, T)
    trainer: Trainer
    sizes: dict[str, int]
    state: dict[str, Any]  # step, tokens_seen, losses: saved with every checkpoint
    emit: MetricsHook
    on_text: TextHook | None

    @property
    def context(self) -> int:
        return self.train_blocks.shape[1]


def prepare(cfg: PretrainConfig, seed: int, data_dir: Path, ckpt_dir: Path, dist: DistInfo,
            on_metrics: MetricsHook | None, on_text: TextHook | None) -> Run:
    if cfg.batch_size % (cfg.micro_batch_size * dist.world_size):
        raise LifecycleError(f"pretrain.batch_size={cfg.batch_size} is not a multiple of micro_batch_size x "
                             f"processes = {cfg.micro_batch_size} x {dist.world_size}")
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    train_blocks, val_blocks = load_split(data_dir, "train"), load_split(data_dir, "validation")
    if len(val_blocks) == 0:
        log.warning("pretrain: the validation split has no blocks; evaluating on the last train blocks")
        val_blocks = train_blocks[-max(1, len(train_blocks) // 20):]
    seed_everything(seed)  # the same initial weights on every rank
    if cfg.init == SCRATCH:
        model = build_model(cfg.model, len(tok), train_blocks.shape[1], tok.eos_token_id, tok.pad_token_id)
    else:  # the stage checked it: found, safetensors, code of its own only if trusted
        folder = fetch_checkpoint(cfg.init, cfg.revision, cfg.trust_remote_code).folder
        model = load_checkpoint_model(folder, tok, cfg.trust_remote_code)
    layers, width = depth_and_width(model)
    sizes = count_params(model) | {"layers": layers, "width": width}
    trainer = build_trainer(cfg, model, dist)
    seed_everything(seed + dist.rank)
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "losses": []}
    if (found := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(found, trainer.model, trainer.optimizer, trainer.scheduler, dist,
                                cfg.distributed.strategy)
        log.info("pretrain: resumed from step %d (%s)", state["step"], found)
    emit = on_metrics if dist.is_main and on_metrics else (lambda m, s: None)
    return Run(cfg=cfg, dist=dist, tok=tok, stats=load_stats(data_dir), train_blocks=train_blocks,
               val_blocks=val_blocks, trainer=trainer, sizes=sizes, state=state, emit=emit,
               on_text=on_text if dist.is_main else None)


def evaluate(run: Run, step: int, limit: int | None, unigram_bpb: float) -> dict[str, float]:
    """Validation loss and bits per byte, plus sample texts; logged (rank 0) at `step`."""
    cfg = run.cfg
    loss = evaluate_loss(run.trainer, run.val_blocks, limit, cfg.micro_batch_size)
    found = {"val_loss": loss, "val_bpb": bits_per_byte(loss, run.stats)}
    texts = sample_texts(run.trainer, run.tok, cfg.sample.prompts, cfg.sample.max_new_tokens,
                         cfg.distributed.strategy)
    if run.dist.is_main:
        log.info("step %d: validation loss %.4f, %.3f bits/byte (unigram %.3f)%s", step, loss, found["val_bpb"],
                 unigram_bpb, "".join(f"\n  {t!r}" for t in texts))
        run.emit({f"pretrain/eval/{k}": v for k, v in found.items()}, step)
        if run.on_text and texts:
            run.on_text("\n\n".join(texts), f"pretrain/samples/step-{step:06d}.txt")
    return found


def _train(cfg: PretrainConfig, seed: int, data_dir: Path, out_dir: Path, ckpt_dir: Path, dist: DistInfo,
           on_metrics: MetricsHook | None, on_text: TextHook | None) -> dict[str, float]:
    run = prepare(cfg, seed, data_dir, ckpt_dir, dist, on_metrics, on_text)
    trainer, state, context = run.trainer, run.state, run.context
    unigram = unigram_loss(run.train_blocks, run.val_blocks, len(run.tok))
    base = {"unigram_bpb": bits_per_byte(unigram, run.stats), "unigram_loss": unigram,
            "params": run.sizes["total"], "resumed_from_step": state["step"]}
    fpt = flops_per_token(run.sizes["matmul"], run.sizes["layers"], run.sizes["width"], context - 1)
    peak, peak_source = detect_peak_flops(dist.device, trainer.dtype, cfg.peak_flops)
    log.info("pretrain: %d train / %d validation blocks of %d; unigram baseline %.3f bits/byte; "
             "%.3g FLOPs/token, peak %.3g FLOP/s (%s)", len(run.train_blocks), len(run.val_blocks), context,
             base["unigram_bpb"], fpt, peak or 0, peak_source)
    # curves go to pretrain/train/* and pretrain/eval/*; the summary the stage returns to pretrain/*
    run.emit({"pretrain/eval/unigram_bpb": base["unigram_bpb"]}, state["step"])

    order = BatchOrder(len(run.train_blocks), cfg.batch_size, seed)
    tokens_per_step = cfg.batch_size * (context - 1)
    pending: list[torch.Tensor] = []  # losses not yet synchronised (one sync per log line, not per step)
    rates: list[float] = []
    timed_steps, t0 = 0, time.perf_counter()

    def flush() -> None:  # the mean loss over all ranks of each pending step -> state["losses"]
        if pending:
            state["losses"].extend((all_reduce_sum(torch.stack(pending), dist) / dist.world_size).tolist())
            pending.clear()

    steps = range(state["step"], cfg.max_steps)
    for step in progress(steps, "pretrain", logger=log) if dist.is_main else steps:
        batches = order.micro_batches(run.train_blocks, step, dist.rank, dist.world_size, cfg.micro_batch_size)
        loss, norm = trainer.step(batches)
        pending.append(loss)
        done, timed_steps = step + 1, timed_steps + 1
        state["step"], state["tokens_seen"] = done, done * tokens_per_step
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            flush()
            rate = timed_steps * tokens_per_step / (time.perf_counter() - t0)
            rates.append(rate)
            metrics = {"loss": state["losses"][-1], "lr": trainer.lr, "grad_norm": float(norm),
                       "tokens_per_s": rate, "mfu": mfu(fpt, rate, peak, dist.world_size),
                       "mem_gb": memory_gb(dist.device), "epoch": order.epoch(done),
                       "tokens_seen": state["tokens_seen"]}
            run.emit({f"pretrain/train/{k}": v for k, v in metrics.items()}, done)
            if dist.is_main:
                log.info("step %d/%d: loss %.4f, lr %.2e, grad norm %.2f, %.0f tokens/s, MFU %.2f%%", done,
                         cfg.max_steps, metrics["loss"], metrics["lr"], metrics["grad_norm"], rate,
                         100 * metrics["mfu"])
            timed_steps, t0 = 0, time.perf_counter()
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps:
            evaluate(run, done, cfg.eval_batches, base["unigram_bpb"])
            timed_steps, t0 = 0, time.perf_counter()  # evaluation is not training throughput
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            flush()
            save_checkpoint(ckpt_dir, done, trainer.model, trainer.optimizer, trainer.scheduler, state, dist,
                            cfg.distributed.strategy, cfg.keep_checkpoints)
            timed_steps, t0 = 0, time.perf_counter()
    # the whole validation split at the end, comparable with the unigram baseline
    final = evaluate(run, cfg.max_steps, None, base["unigram_bpb"])
    steady = rates[1:] or rates  # the first window includes warm-up (and compilation)
    tokens_per_s = float(np.mean(steady)) if steady else 0.0
    metrics = {**base, **final, "final_loss": state["losses"][-1] if state["losses"] else float("nan"),
               "steps": cfg.max_steps, "tokens": state["tokens_seen"], "tokens_per_s": tokens_per_s,
               "mfu": mfu(fpt, tokens_per_s, peak, dist.world_size), "flops_per_token": fpt,
               "peak_flops": peak or 0.0, "world_size": dist.world_size, "mem_gb": memory_gb(dist.device)}
    save_final(trainer, run.tok, out_dir, metrics, state, dist, cfg.distributed.strategy)
    return metrics


def save_final(trainer: Trainer, tok: PreTrainedTokenizerBase, out_dir: Path, metrics: dict[str, float],
               state: dict, dist: DistInfo, strategy: str) -> None:
    """out_dir/model (weights + tokenizer, `from_pretrained`-ready), metrics.json, train_log.json."""
    weights = model_state(trainer.model, strategy, dist)  # collective under FSDP
    if dist.is_main:
        model = unwrap(trainer.model)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir / "model"), state_dict=weights)
        tok.save_pretrained(str(out_dir / "model"))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out_dir / "train_log.json").write_text(json.dumps({"losses": state["losses"]}))
    barrier(dist)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lifecycle.train.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the tokenize stage's output folder (blocks/, tokenizer/, stats.json)")
    p.add_argument("--config", required=True, help='JSON file or inline JSON: {"seed": N, "pretrain": {...}}')
    p.add_argument("--out", required=True, help="where model/, metrics.json and train_log.json go")
    p.add_argument("--checkpoints", required=True, help="resumable checkpoints (re-run to resume)")
    p.add_argument("--mlflow-run-id", help="log metrics and samples to this MLflow run (rank 0)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"[rank {rank}] %(name)s: %(message)s")
    transformers.utils.logging.disable_progress_bar()
    try:
        spec = json.loads(args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text())
    except (OSError, ValueError) as err:
        print(f"error: --config {args.config[:80]!r}: not a JSON file or inline JSON ({err})", file=sys.stderr)
        return 2
    cfg = PretrainConfig.model_validate(spec["pretrain"])
    hooks: dict[str, Callable] = {}
    if args.mlflow_run_id and rank == 0:
        from lifecycle.train.tracking import mlflow_hooks

        hooks = dict(zip(("on_metrics", "on_text"), mlflow_hooks(args.mlflow_run_id)))
    try:
        metrics = train(cfg, int(spec["seed"]), Path(args.data), Path(args.out), Path(args.checkpoints), **hooks)
    except Exception as err:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one rank of several: report, then leave at once
            leave_the_group(err)
        if not isinstance(err, LifecycleError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps({k: metrics[k] for k in ("final_loss", "val_loss", "val_bpb", "unigram_bpb",
                                                  "resumed_from_step", "tokens_per_s")}))
    return 0


def leave_the_group(err: Exception) -> NoReturn:
    """End a failed rank without freeing its process group: the error's traceback holds the model, whose DDP
    reducer holds the gloo group, and freeing that while the group's worker thread still releases the last
    collective deadlocks in torch (the worker waits for the GIL, the main thread holds it joining the worker).
    The peers see this process gone and fail too; torchrun reports the exit status."""
    message = f"error: {err}" if isinstance(err, LifecycleError) else "".join(traceback.format_exception(err))
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2 if isinstance(err, LifecycleError) else 1)


if __name__ == "__main__":
    sys.exit(main())

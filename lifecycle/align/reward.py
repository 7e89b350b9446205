"""The reward model: a one-output sequence classifier (`rlhf.reward.model`: the SFT model with a score head, or
an encoder of its own reading (answer, context) pairs; lifecycle/align/reward_model.py), trained on the
preference pairs with TRL's RewardTrainer (Bradley-Terry loss on r(chosen) - r(rejected); the pairs
pre-tokenised by the reward model itself), then checked on held-out pairs.

A reward model can look good by rewarding length alone, so its held-out pairwise accuracy is compared with
the "longer answer wins" baseline; one that does not beat it by `rlhf.reward.baseline_margin` is flagged.
Pairs longer than a chat reward model's context are dropped here and counted (TRL would drop them silently;
an encoder's pairs are cut to fit). A killed
run, re-run with the same checkpoint folder, resumes from its newest checkpoint.

    result = train_reward(cfg, sft_dir, rows, out_dir, ckpt_dir, on_metrics=hook)  # out_dir/reward_model
    result, reward = fit_reward(...)                # the same, with the trained RewardModel in hand (torchrun)
    result.metrics["accuracy"], result.metrics["length_baseline"], result.flagged
    evaluate_reward(out_dir / "reward_model", rows)   # lifecycle eval-reward: {"accuracy": ..., ...}
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import PrinterCallback, set_seed

from lifecycle.align.callbacks import MetricsCallback, MetricsHook
from lifecycle.align.pairs import Row, split_pairs
from lifecycle.align.reward_model import RewardModel, load_classifier, start_reward_model
from lifecycle.align.sealing import SealCheckpoints, last_intact_checkpoint
from lifecycle.config import Config
from lifecycle.config.passthrough import trainer_config
from lifecycle.errors import LifecycleError
from lifecycle.lora import LoraSettings, lora_settings, save_trained, trainable_share

log = logging.getLogger("lifecycle.rlhf")


@dataclass(frozen=True)
class RewardResult:
    metrics: dict[str, float]
    margins: list[float]  # r(chosen) - r(rejected) on each held-out pair
    flagged: bool  # does not beat the longer-answer-wins baseline
    kind: str = "chat"  # what the reward model reads (RewardModel.kind): "chat" or "pair"


def reward_args(cfg: Config, ckpt_dir: Path, max_length: int) -> Any:
    """trl.RewardConfig from `rlhf.reward.trainer` (passed through) and what the stage owns."""
    import trl

    forced = {"output_dir": str(ckpt_dir), "report_to": "none", "seed": cfg.run.seed, "max_length": max_length}
    return trainer_config(trl.RewardConfig, cfg, "rlhf.reward", cfg.rlhf.device, forced)


def reward_lora(cfg: Config) -> LoraSettings | None:
    """`rlhf.reward.peft` as LoRA settings (None: full fine-tuning); a ConfigError names a bad key."""
    return lora_settings(cfg, "rlhf.reward", cfg.rlhf.device)


def fit_rows(rows: list[Row], fits: Callable[[Row], bool], what: str) -> tuple[list[Row], int]:
    """(the rows that `fits` keeps, how many it did not): pairs a trainer would drop or cut, counted."""
    kept = [r for r in rows if fits(r)]
    if len(kept) < len(rows):
        log.warning("rlhf: %d of %d preference pairs do not fit %s: dropped", len(rows) - len(kept), len(rows), what)
    return kept, len(rows) - len(kept)


def prepare_rows(cfg: Config, rows: list[Row], fits: Callable[[Row], bool],
                 what: str) -> tuple[list[Row], list[Row], int]:
    """(train, held out, dropped): the stable split, then only pairs that fit; both sides must be non-empty."""
    train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
    train, dropped_train = fit_rows(train, fits, what)
    held_out, dropped_held = fit_rows(held_out, fits, what)
    if not train or not held_out:
        raise LifecycleError(f"rlhf: {len(rows)} preference pairs leave {len(train)} to train on and {len(held_out)} "
                             f"held out (rlhf.held_out_fraction {cfg.rlhf.held_out_fraction}, "
                             f"{dropped_train + dropped_held} do not fit {what}); both must be > 0: "
                             f"export more pairs or change rlhf.held_out_fraction")
    return train, held_out, dropped_train + dropped_held


def window_of(reward: RewardModel) -> str:
    return f"the reward model's {reward.max_length}-token context"


def length_baseline(rows: list[Row]) -> float:
    """Pairwise accuracy of "the longer answer (in characters) wins"; equal lengths count half."""
    if not rows:
        return 0.0
    wins = [np.sign(len(r["chosen"][0]["content"]) - len(r["rejected"][0]["content"])) for r in rows]
    return float(np.mean([(w + 1) / 2 for w in wins]))


def held_out_metrics(rows: list[Row], margins: list[float], baseline_margin: float) -> dict[str, float]:
    """Pairwise accuracy (overall and per source), the length baseline, margin quantiles, and whether the
    accuracy beats the baseline by `baseline_margin`."""
    right = [m > 0 for m in margins]
    by_source: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, right, strict=True):
        by_source[str(row.get("source") or "unknown")].append(ok)
    accuracy, baseline = float(np.mean(right)), length_baseline(rows)
    p10, p50, p90 = np.percentile(margins, [10, 50, 90])
    return {"accuracy": accuracy, "length_baseline": baseline, "margin_mean": float(np.mean(margins)),
            "margin_p10": float(p10), "margin_p50": float(p50), "margin_p90": float(p90),
            **{f"accuracy/{s}": float(np.mean(v)) for s, v in sorted(by_source.items())},
            "beats_length_baseline": float(accuracy > baseline + baseline_margin)}


def train_reward(cfg: Config, sft_dir: Path, rows: list[Row], out_dir: Path, ckpt_dir: Path,
                 on_metrics: MetricsHook | None = None) -> RewardResult:
    """Train the reward model on `rows`, from the SFT model in `sft_dir` or the encoder `rlhf.reward.model`
    names; write out_dir/reward_model (model + tokenizer) and out_dir/reward_metrics.json."""
    return fit_reward(cfg, sft_dir, rows, out_dir, ckpt_dir, on_metrics)[0]


def fit_reward(cfg: Config, sft_dir: Path, rows: list[Row], out_dir: Path, ckpt_dir: Path,
               on_metrics: MetricsHook | None = None) -> tuple[RewardResult, RewardModel]:
    """train_reward, handing back the trained reward model too: under torchrun every process holds the same
    weights, so the policy can score with them on nodes where nothing was written (global rank 0 alone writes
    out_dir)."""
    import trl

    set_seed(cfg.run.seed)  # the fresh reward head is random
    lora = reward_lora(cfg)
    reward = start_reward_model(cfg, sft_dir, lora)
    train, held_out, dropped = prepare_rows(cfg, rows, reward.fits, window_of(reward))
    trainer = trl.RewardTrainer(model=reward.model, args=reward_args(cfg, ckpt_dir, reward.max_length),
                                processing_class=reward.tokenizer,
                                train_dataset=datasets.Dataset.from_list([reward.training_row(r) for r in train]),
                                eval_dataset=datasets.Dataset.from_list([reward.training_row(r) for r in held_out]),
                                callbacks=[MetricsCallback(on_metrics, prefix="rlhf/reward_model", logger=log),
                                           SealCheckpoints()], peft_config=lora.config if lora else None)
    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: MetricsCallback logs them instead
    resume = last_intact_checkpoint(ckpt_dir, log)
    if resume:
        log.info("rlhf: reward model: resuming from %s", resume)
    share = trainable_share(trainer.model)
    output = trainer.train(resume_from_checkpoint=resume)
    # written by the main process only (under torchrun: global rank 0); a LoRA adapter is merged for use here
    reward.model = save_trained(trainer, out_dir / "reward_model", lora, reward.base_dir,
                                lambda d: load_classifier(d, num_labels=1)[0])
    margins = reward.margins(held_out, cfg.rlhf.reward.batch_size)
    metrics = {"train_pairs": len(train), "held_out_pairs": len(held_out), "dropped_pairs": dropped,
               "train_loss": output.training_loss, "steps": output.global_step, "resumed": float(bool(resume)),
               **share, **held_out_metrics(held_out, margins, cfg.rlhf.reward.baseline_margin)}
    if trainer.is_world_process_zero():
        reward.tokenizer.save_pretrained(str(out_dir / "reward_model"))  # pair inputs: with their max length
        (out_dir / "reward_metrics.json").write_text(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()
    flagged = not metrics["beats_length_baseline"]
    log.info("rlhf: reward model (%s inputs): held-out accuracy %.3f vs length baseline %.3f (%d pairs), margin p50 "
             "%.3f", reward.kind, metrics["accuracy"], metrics["length_baseline"], len(held_out), metrics["margin_p50"])
    if flagged:
        log.warning("rlhf: reward model FLAGGED: held-out accuracy %.3f does not beat the longer-answer-wins baseline "
                    "%.3f by rlhf.reward.baseline_margin %.3f; it may be rewarding length, not quality",
                    metrics["accuracy"], metrics["length_baseline"], cfg.rlhf.reward.baseline_margin)
    return RewardResult(metrics=metrics, margins=margins, flagged=flagged, kind=reward.kind), reward


def evaluate_reward(model_dir: Path, rows: list[Row], batch_size: int = 32,
                    baseline_margin: float = 0.0) -> dict[str, Any]:
    """A saved reward model (either kind) on preference rows (JSON-ready): accuracy, the length baseline,
    margins. Pairs longer than a chat reward model's context are left out and counted."""
    reward = RewardModel.load(model_dir)
    fitted, dropped = fit_rows(rows, reward.fits, window_of(reward))
    if not fitted:
        raise LifecycleError(f"eval-reward: none of the {len(rows)} preference pairs fits the reward model "
                             f"{model_dir} ({dropped} longer than its context)")
    reward.to("cuda" if torch.cuda.is_available() else "cpu")
    found = held_out_metrics(fitted, reward.margins(fitted, batch_size), baseline_margin)
    return {"pairs": len(fitted), "dropped_pairs": dropped, "kind": reward.kind, "accuracy": found["accuracy"],
            "length_baseline": found["length_baseline"],
            "beats_length_baseline": bool(found["beats_length_baseline"]), "margin_mean": found["margin_mean"],
            "margin_p50": found["margin_p50"],
            "accuracy_by_source": {k.removeprefix("accuracy/"): v for k, v in found.items()
                                   if k.startswith("accuracy/")}}

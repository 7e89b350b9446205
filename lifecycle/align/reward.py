"""The reward model: the SFT model with a one-output sequence-classification head, trained on the preference
pairs with TRL's RewardTrainer (Bradley-Terry loss on r(chosen) - r(rejected)), then checked on held-out pairs.

A reward model can look good by rewarding length alone, so its held-out pairwise accuracy is compared with
the "longer answer wins" baseline; one that does not beat it by `rlhf.reward.baseline_margin` is flagged.
Pairs longer than the model's context are dropped here and counted (TRL would drop them silently). A killed
run, re-run with the same checkpoint folder, resumes from its newest checkpoint.

    result = train_reward(cfg, sft_dir, rows, out_dir, ckpt_dir, on_metrics=hook)  # out_dir/reward_model
    result, model, tokenizer = fit_reward(...)      # the same, with the trained model in hand (torchrun)
    result.metrics["accuracy"], result.metrics["length_baseline"], result.flagged
    evaluate_reward(out_dir / "reward_model", rows)   # lifecycle eval-reward: {"accuracy": ..., ...}
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    set_seed,
)

from lifecycle.align.callbacks import MetricsCallback, MetricsHook
from lifecycle.align.pairs import Row, split_pairs, trl_rows
from lifecycle.align.sealing import SealCheckpoints, last_intact_checkpoint
from lifecycle.config import Config
from lifecycle.config.passthrough import trainer_config
from lifecycle.errors import LifecycleError
from lifecycle.model import context_window, evaluating, find_hf_dirs, right_pad

log = logging.getLogger("lifecycle.rlhf")


@dataclass(frozen=True)
class RewardResult:
    metrics: dict[str, float]
    margins: list[float]  # r(chosen) - r(rejected) on each held-out pair
    flagged: bool  # does not beat the longer-answer-wins baseline


def reward_args(cfg: Config, ckpt_dir: Path, max_length: int) -> Any:
    """trl.RewardConfig from `rlhf.reward.trainer` (passed through) and what the stage owns."""
    import trl

    forced = {"output_dir": str(ckpt_dir), "report_to": "none", "seed": cfg.run.seed, "max_length": max_length}
    return trainer_config(trl.RewardConfig, cfg, "rlhf.reward", cfg.rlhf.device, forced)


def conversation_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                     add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation as TRL's preference trainers make them (trl.data_utils._tokenize); quietly:
    a conversation longer than the context is expected here (callers measure it to drop it)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, tools=None,
                                        add_generation_prompt=add_generation_prompt,
                                        tokenizer_kwargs={"verbose": False})
    return list(out["input_ids"])


def fit_rows(rows: list[Row], tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[list[Row], int]:
    """(rows whose prompt + chosen and prompt + rejected both fit `max_length` tokens, how many did not)."""
    kept = [r for r in rows if max(len(conversation_ids(tokenizer, r["prompt"] + r[side]))
                                   for side in ("chosen", "rejected")) <= max_length]
    if len(kept) < len(rows):
        log.warning("rlhf: %d of %d preference pairs do not fit the model's %d-token context: dropped",
                    len(rows) - len(kept), len(rows), max_length)
    return kept, len(rows) - len(kept)


def prepare_rows(cfg: Config, rows: list[Row], tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> tuple[list[Row], list[Row], int]:
    """(train, held out, dropped): the stable split, then only pairs that fit; both sides must be non-empty."""
    train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
    train, dropped_train = fit_rows(train, tokenizer, max_length)
    held_out, dropped_held = fit_rows(held_out, tokenizer, max_length)
    if not train or not held_out:
        raise LifecycleError(f"rlhf: {len(rows)} preference pairs leave {len(train)} to train on and {len(held_out)} "
                             f"held out (rlhf.held_out_fraction {cfg.rlhf.held_out_fraction}, "
                             f"{dropped_train + dropped_held} longer than {max_length} tokens); both must be > 0: "
                             f"export more pairs or change rlhf.held_out_fraction")
    return train, held_out, dropped_train + dropped_held


def load_reward_model(path: Path, num_labels: int | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model and its tokenizer from a folder (save_pretrained or MLflow layout);
    `num_labels=1` puts a fresh reward head on a causal LM. The model knows the pad token (scores are read
    at the last non-pad token)."""
    model_dir, tok_dir = find_hf_dirs(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    if num_labels:
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        with suppress_seqcls_warning():  # "score.weight MISSING" is the point: a new head on the causal LM
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels,
                                                                       use_safetensors=True)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def score_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[Row],
                batch_size: int) -> list[float]:
    """r(chosen) - r(rejected) for each row: prompt + answer through the chat template, right-padded, chosen
    and rejected in one batch, as RewardTrainer's collator feeds them."""
    margins: list[float] = []
    with evaluating(model):
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            seqs = [conversation_ids(tokenizer, r["prompt"] + r[side])
                    for side in ("chosen", "rejected") for r in batch]  # chosen first, as the collator
            ids, mask = right_pad(seqs, tokenizer.pad_token_id)
            with torch.inference_mode():
                rewards = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, 0]
            chosen, rejected = rewards.float().cpu().chunk(2)  # (batch,) each
            margins += (chosen - rejected).tolist()
    return margins


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
    """Train the reward model on `rows` from the SFT model in `sft_dir`; write out_dir/reward_model (model +
    tokenizer) and out_dir/reward_metrics.json."""
    return fit_reward(cfg, sft_dir, rows, out_dir, ckpt_dir, on_metrics)[0]


def fit_reward(cfg: Config, sft_dir: Path, rows: list[Row], out_dir: Path, ckpt_dir: Path,
               on_metrics: MetricsHook | None = None
               ) -> tuple[RewardResult, PreTrainedModel, PreTrainedTokenizerBase]:
    """train_reward, handing back the trained model and its tokenizer too: under torchrun every process holds
    the same weights, so the policy can score with them on nodes where nothing was written (global rank 0
    alone writes out_dir)."""
    import trl

    set_seed(cfg.run.seed)  # the fresh reward head is random
    model, tokenizer = load_reward_model(sft_dir, num_labels=1)
    window = context_window(model, tokenizer)
    train, held_out, dropped = prepare_rows(cfg, rows, tokenizer, window)
    trainer = trl.RewardTrainer(model=model, args=reward_args(cfg, ckpt_dir, window), processing_class=tokenizer,
                                train_dataset=datasets.Dataset.from_list(trl_rows(train)),
                                eval_dataset=datasets.Dataset.from_list(trl_rows(held_out)),
                                callbacks=[MetricsCallback(on_metrics, prefix="rlhf/reward_model", logger=log),
                                           SealCheckpoints()])
    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: MetricsCallback logs them instead
    resume = last_intact_checkpoint(ckpt_dir, log)
    if resume:
        log.info("rlhf: reward model: resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    margins = score_pairs(trainer.model, tokenizer, held_out, cfg.rlhf.reward.batch_size)
    metrics = {"train_pairs": len(train), "held_out_pairs": len(held_out), "dropped_pairs": dropped,
               "train_loss": output.training_loss, "steps": output.global_step, "resumed": float(bool(resume)),
               **held_out_metrics(held_out, margins, cfg.rlhf.reward.baseline_margin)}
    trainer.save_model(str(out_dir / "reward_model"))  # by the main process only (under torchrun: global rank 0)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir / "reward_model"))
        (out_dir / "reward_metrics.json").write_text(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()
    flagged = not metrics["beats_length_baseline"]
    log.info("rlhf: reward model: held-out accuracy %.3f vs length baseline %.3f (%d pairs), margin p50 %.3f",
             metrics["accuracy"], metrics["length_baseline"], len(held_out), metrics["margin_p50"])
    if flagged:
        log.warning("rlhf: reward model FLAGGED: held-out accuracy %.3f does not beat the longer-answer-wins baseline "
                    "%.3f by rlhf.reward.baseline_margin %.3f; it may be rewarding length, not quality",
                    metrics["accuracy"], metrics["length_baseline"], cfg.rlhf.reward.baseline_margin)
    return RewardResult(metrics=metrics, margins=margins, flagged=flagged), trainer.model, tokenizer


def evaluate_reward(model_dir: Path, rows: list[Row], batch_size: int = 32,
                    baseline_margin: float = 0.0) -> dict[str, Any]:
    """A saved reward model on preference rows (JSON-ready): accuracy, the length baseline, margins. Pairs
    longer than the model's context are left out and counted."""
    model, tokenizer = load_reward_model(model_dir)
    fitted, dropped = fit_rows(rows, tokenizer, context_window(model, tokenizer))
    if not fitted:
        raise LifecycleError(f"eval-reward: none of the {len(rows)} preference pairs fits the reward model "
                             f"{model_dir} ({dropped} longer than its context)")
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    found = held_out_metrics(fitted, score_pairs(model, tokenizer, fitted, batch_size), baseline_margin)
    return {"pairs": len(fitted), "dropped_pairs": dropped, "accuracy": found["accuracy"],
            "length_baseline": found["length_baseline"],
            "beats_length_baseline": bool(found["beats_length_baseline"]), "margin_mean": found["margin_mean"],
            "margin_p50": found["margin_p50"],
            "accuracy_by_source": {k.removeprefix("accuracy/"): v for k, v in found.items()
                                   if k.startswith("accuracy/")}}

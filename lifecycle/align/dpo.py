"""DPO: the SFT model trained straight on the preference pairs with TRL's DPOTrainer (no reward model in
the loop); a frozen copy of the SFT model is the reference (ref_model=None: TRL loads it again from the
SFT folder; with `rlhf.dpo.peft`, LoRA: the SFT model with its adapter disabled, lifecycle/lora.py).

The held-out pairs measure what DPO is meant to change: the policy's log-probability margin
log p(chosen | prompt) - log p(rejected | prompt) (answer tokens summed, through the chat template, as
TRL tokenises them), before and after training. Pairs longer than the model's context are dropped and
counted. With simulated preferences the held-out prompts carry reference answers: the policy's greedy
answers to them are scored by the gold judge every `rlhf.gold.every` steps, next to the DPO implicit reward
(the proxy: beta * log-ratio to the reference) and the KL (lifecycle/align/gold.py); `DpoResult.health` judges
that curve (proxy up while gold falls, or while the KL passes max_kl: alarm). A killed run, re-run with the
same checkpoint folder, resumes from its newest checkpoint.

    result = train_dpo(cfg, sft_dir, rows, out_dir, ckpt_dir, on_metrics=hook)   # out_dir/policy
    result.metrics["margin_after"] > result.metrics["margin_before"]
    result.metrics["gold_last"], result.health.alarm                            # out_dir/policy_health.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback, set_seed

from lifecycle.align.callbacks import MetricsCallback, MetricsHook
from lifecycle.align.gold import GoldMonitor, dpo_proxy, fit_gold_prompts, gold_note, gold_set, json_ready
from lifecycle.align.health import HealthReport, assess, summarize_gold
from lifecycle.align.pairs import Row, split_pairs, trl_rows
from lifecycle.align.reward import prepare_rows
from lifecycle.align.reward_model import chat_fits, conversation_ids
from lifecycle.align.sealing import SealCheckpoints, last_intact_checkpoint
from lifecycle.config import Config
from lifecycle.config.passthrough import trainer_config
from lifecycle.lora import LoraSettings, load_for_training, lora_settings, save_trained, trainable_share
from lifecycle.model import context_window, evaluating, load_causal_lm, right_pad

log = logging.getLogger("lifecycle.rlhf")


@dataclass(frozen=True)
class DpoResult:
    metrics: dict[str, float]
    health: HealthReport


def dpo_args(cfg: Config, ckpt_dir: Path, max_length: int) -> Any:
    """trl.DPOConfig from `rlhf.dpo.trainer` (passed through) and what the stage owns."""
    import trl

    forced = {"output_dir": str(ckpt_dir), "report_to": "none", "seed": cfg.run.seed, "max_length": max_length}
    return trainer_config(trl.DPOConfig, cfg, "rlhf.dpo", cfg.rlhf.device, forced)


def dpo_lora(cfg: Config) -> LoraSettings | None:
    """`rlhf.dpo.peft` as LoRA settings (None: full fine-tuning); a ConfigError names a bad key."""
    return lora_settings(cfg, "rlhf.dpo", cfg.rlhf.device)


def answer_tokens(tokenizer: PreTrainedTokenizerBase, row: Row, side: str) -> tuple[list[int], int]:
    """(prompt + answer ids, where the answer starts): the answer starts where the prompt with its
    generation prompt and the whole conversation diverge, as in DPOTrainer."""
    prompt = conversation_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    full = conversation_ids(tokenizer, row["prompt"] + row[side])
    start = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full)))
    return full, start


def logprob_margins(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[Row],
                    batch_size: int = 8) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) for each row under `model` (sums over answer tokens)."""
    margins: list[float] = []
    with evaluating(model):
        for begin in range(0, len(rows), batch_size):
            batch = rows[begin:begin + batch_size]
            seqs = [answer_tokens(tokenizer, r, side) for side in ("chosen", "rejected") for r in batch]
            ids, attention = right_pad([seq for seq, _ in seqs], tokenizer.pad_token_id)
            answer = torch.zeros_like(ids)
            for i, (seq, start) in enumerate(seqs):
                answer[i, start:len(seq)] = 1
            ids, attention, answer = ids.to(model.device), attention.to(model.device), answer.to(model.device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()  # (2b, t-1, vocab)
            targets = ids[:, 1:]
            token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (2b, t-1)
            logps = (token_logps * answer[:, 1:]).sum(-1).cpu()  # (2b,)
            chosen, rejected = logps.chunk(2)
            margins += (chosen - rejected).tolist()
    return margins


def train_dpo(cfg: Config, sft_dir: Path, rows: list[Row], out_dir: Path, ckpt_dir: Path,
              on_metrics: MetricsHook | None = None) -> DpoResult:
    """DPO from the SFT model in `sft_dir` on `rows`; write out_dir/policy (model + tokenizer) and
    out_dir/dpo_metrics.json."""
    import trl

    set_seed(cfg.run.seed)
    lora = dpo_lora(cfg)  # LoRA: the reference is the model with its adapter disabled (ref_model stays None)
    model, tokenizer = load_for_training(sft_dir, lora)
    window = context_window(model, tokenizer)
    train, held_out, dropped = prepare_rows(cfg, rows, lambda row: chat_fits(tokenizer, row, window),
                                            f"the model's {window}-token context")
    args = dpo_args(cfg, ckpt_dir, window)
    gold = gold_set(split_pairs(rows, cfg.rlhf.held_out_fraction)[1], cfg.rlhf.gold)
    gold_monitor = GoldMonitor(fit_gold_prompts(gold.prompts, tokenizer, window, cfg.rlhf.gold.max_new_tokens),
                               tokenizer, cfg.rlhf.gold, dpo_proxy(args.beta), on_metrics)
    trainer = trl.DPOTrainer(model=model, ref_model=None, args=args, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(trl_rows(train)),
                             eval_dataset=datasets.Dataset.from_list(trl_rows(held_out)),
                             callbacks=[MetricsCallback(on_metrics, prefix="rlhf/dpo", logger=log), gold_monitor,
                                        SealCheckpoints()], peft_config=lora.config if lora else None)
    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: MetricsCallback logs them instead
    if trainer.ref_model is not None:  # None with PEFT: the gold monitor disables the adapter instead
        gold_monitor.reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    before = float(np.mean(logprob_margins(trainer.model, tokenizer, held_out)))  # the SFT model, on its device
    resume = last_intact_checkpoint(ckpt_dir, log)
    if resume:
        log.info("rlhf: dpo: resuming from %s", resume)
    share = trainable_share(trainer.model)
    output = trainer.train(resume_from_checkpoint=resume)
    after = float(np.mean(logprob_margins(trainer.model, tokenizer, held_out)))
    metrics = {"train_pairs": len(train), "held_out_pairs": len(held_out), "dropped_pairs": dropped,
               "train_loss": output.training_loss, "steps": output.global_step, "resumed": float(bool(resume)),
               "margin_before": before, "margin_after": after, "margin_gain": after - before, **share}
    health = assess([], cfg.rlhf.health, gold_monitor.history, cfg.rlhf.gold, [gold_note(gold, gold_monitor)])
    if gold_monitor.history:  # the gold numbers, where there are any (JSON and MLflow keep finite numbers)
        metrics |= summarize_gold(gold_monitor.history)
    # by the main process only (under torchrun: global rank 0)
    save_trained(trainer, out_dir / "policy", lora, sft_dir, lambda d: load_causal_lm(d)[0])
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir / "policy"))
        (out_dir / "dpo_metrics.json").write_text(json.dumps(metrics, indent=2))
        report = {"metrics": metrics, "alarm": health.alarm, "reasons": health.reasons, "notes": health.notes,
                  "gold": [asdict(p) for p in gold_monitor.history]}
        (out_dir / "policy_health.json").write_text(json.dumps(json_ready(report), indent=2))
    trainer.accelerator.wait_for_everyone()
    log.info("rlhf: dpo: held-out log-probability margin chosen - rejected %.3f -> %.3f (%d pairs)%s", before, after,
             len(held_out), "" if not gold_monitor.history else
             f"; held-out gold {metrics['gold_first']:.4g} -> {metrics['gold_last']:.4g}")
    return DpoResult(metrics=metrics, health=health)

"""Supervised fine-tuning with TRL's SFTTrainer: the base model learns to answer, with the loss on the
assistant's tokens only (the chat template's {% generation %} markers, `assistant_only_loss`).

The model's tokenizer gets a chat template whose default system message is `sft.data.system_prompt`, so
the instruction it was trained with travels with the model (to `lifecycle ask`, serving, or any tool that
applies its chat template). Held-out pairs measure the base model and the SFT model the same way: the
assistant-token loss, and ROUGE-L of greedy answers against the reference answers. With `sft.peft` only a
LoRA adapter trains (lifecycle/lora.py); out_dir/model is then the merged model or the adapter
(`sft.peft.register`). A killed run, re-run with the same checkpoint folder, resumes from its newest checkpoint.

    result = train_sft(cfg, base_dir, documents, out_dir, ckpt_dir, device="cpu", on_metrics=hook)
    result.metrics["eval_loss"] < result.metrics["base_eval_loss"]    # out_dir/model: model + tokenizer
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback

from lifecycle.align.callbacks import MetricsCallback as _Metrics
from lifecycle.align.callbacks import MetricsHook
from lifecycle.align.sft_data import Pair, build_pairs, fit_pairs
from lifecycle.align.sealing import SealCheckpoints, last_intact_checkpoint
from lifecycle.config import Config
from lifecycle.config.passthrough import trainer_config
from lifecycle.text import mean_rouge_l, rouge_l
from lifecycle.hashing import hash_json
from lifecycle.lora import LoraSettings, load_for_training, lora_settings, save_trained, trainable_share
from lifecycle.model import context_window, load_causal_lm
from lifecycle.progress import progress
from lifecycle.tokenizer import stop_token_ids, use_system_prompt

log = logging.getLogger("lifecycle.sft")


@dataclass(frozen=True)
class SftResult:
    metrics: dict[str, float]
    data_hash: str  # of the training and held-out conversations: the instruction data's identity
    samples: list[dict[str, Any]]  # held-out questions with the reference, base and SFT answers


def sft_args(cfg: Config, ckpt_dir: Path, max_length: int) -> Any:
    """trl.SFTConfig from `sft.trainer` (passed through) and what the stage owns."""
    import trl

    forced = {"output_dir": str(ckpt_dir), "report_to": "none", "seed": cfg.run.seed, "max_length": max_length}
    return trainer_config(trl.SFTConfig, cfg, "sft", cfg.sft.device, forced)


def to_dataset(pairs: list[Pair]) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"messages": list(p.messages)} for p in pairs])


def sft_lora(cfg: Config) -> LoraSettings | None:
    """`sft.peft` as LoRA settings (None: full fine-tuning); a ConfigError names a bad key."""
    return lora_settings(cfg, "sft", cfg.sft.device)


def build_trainer(cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: list[Pair],
                  held_out: list[Pair], ckpt_dir: Path, on_metrics: MetricsHook | None = None) -> Any:
    """The SFTTrainer; with `sft.peft`, it wraps the model in a LoRA adapter (only the adapter trains)."""
    import trl

    args = sft_args(cfg, ckpt_dir, context_window(model, tokenizer))
    lora = sft_lora(cfg)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=to_dataset(train),
                             eval_dataset=to_dataset(held_out) if held_out else None, processing_class=tokenizer,
                             callbacks=[_Metrics(on_metrics), SealCheckpoints()],
                             peft_config=lora.config if lora else None)
    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: _Metrics logs them instead
    return trainer


def prepare(cfg: Config, base_dir: Path, documents: list[dict[str, Any]]) -> tuple[
        PreTrainedModel, PreTrainedTokenizerBase, list[Pair], list[Pair]]:
    """The base model, its tokenizer with the SFT chat template, and (train, held-out) pairs that fit."""
    model, tokenizer = load_for_training(base_dir, sft_lora(cfg))
    use_system_prompt(tokenizer, cfg.sft.data.system_prompt)
    window = context_window(model, tokenizer)
    tokenizer.model_max_length = window
    train, held_out = build_pairs(cfg.sft.data, documents)
    train, _ = fit_pairs(train, tokenizer, window)
    held_out, _ = fit_pairs(held_out, tokenizer, window)
    return model, tokenizer, train, held_out


def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict[str, str]]],
                     max_new_tokens: int, batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                     label: str = "sft: generate") -> list[str]:
    """Answers, batched with left padding, stopped at the end of the assistant's turn: greedy, or sampled
    at `temperature` > 0 (seed torch first for reproducible samples)."""
    window = context_window(model, tokenizer)
    stop = stop_token_ids(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    model.eval()
    try:
        batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        for batch in progress(batches, label, logger=log):
            texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
            enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
            new = max(1, min(max_new_tokens, window - enc["input_ids"].shape[1]))
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=new, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
            answers += [tokenizer.decode(row, skip_special_tokens=True).strip()
                        for row in out[:, enc["input_ids"].shape[1]:]]
    finally:
        tokenizer.padding_side = side
    return answers


def score_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[Pair],
                  max_new_tokens: int) -> tuple[float, list[str]]:
    """(mean ROUGE-L against the reference answers, the answers)."""
    if not pairs:
        return 0.0, []
    answers = generate_answers(model, tokenizer, [p.prompt for p in pairs], max_new_tokens)
    return mean_rouge_l(answers, [p.answer for p in pairs]), answers


def train_sft(cfg: Config, base_dir: Path, documents: list[dict[str, Any]], out_dir: Path, ckpt_dir: Path,
              on_metrics: MetricsHook | None = None) -> SftResult:
    """Fine-tune the model in `base_dir`; write out_dir/model (model + tokenizer) and metrics.json."""
    model, tokenizer, train, held_out = prepare(cfg, base_dir, documents)
    scored = [p for p in held_out if p.source == "python-docs"][:cfg.sft.eval.max_pairs]
    trainer = build_trainer(cfg, model, tokenizer, train, held_out, ckpt_dir, on_metrics)
    metrics: dict[str, float] = {"train_pairs": len(train), "held_out_pairs": len(held_out),
                                 "rouge_pairs": len(scored), "max_length": context_window(model, tokenizer),
                                 **trainable_share(trainer.model)}
    if held_out:
        metrics["base_eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics["base_rouge_l"], base_answers = score_answers(trainer.model, tokenizer, scored, cfg.sft.eval.max_new_tokens)
    resume = last_intact_checkpoint(ckpt_dir, log)
    if resume:
        log.info("sft: resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    metrics |= {"train_loss": output.training_loss, "steps": output.global_step, "resumed": float(bool(resume))}
    if held_out:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics["rouge_l"], answers = score_answers(trainer.model, tokenizer, scored, cfg.sft.eval.max_new_tokens)
    save_trained(trainer, out_dir / "model", sft_lora(cfg), base_dir, lambda d: load_causal_lm(d)[0])
    tokenizer.save_pretrained(str(out_dir / "model"))
    samples = [{"question": p.question, "reference": p.answer, "base": b, "sft": a,
                "rouge_l": rouge_l(a, p.answer), "base_rouge_l": rouge_l(b, p.answer)}
               for p, b, a in zip(scored, base_answers, answers, strict=True)]
    data_hash = hash_json([[list(p.messages) for p in train], [list(p.messages) for p in held_out]])
    (out_dir / "metrics.json").write_text(json.dumps(metrics | {"data_hash": data_hash}, indent=2))
    (out_dir / "samples.json").write_text(json.dumps(samples, indent=2))
    log.info("sft: held-out loss %.3f -> %.3f, ROUGE-L %.3f -> %.3f (base -> sft, %d pairs)",
             metrics.get("base_eval_loss", float("nan")), metrics.get("eval_loss", float("nan")),
             metrics["base_rouge_l"], metrics["rouge_l"], len(scored))
    return SftResult(metrics=metrics, data_hash=data_hash, samples=samples)

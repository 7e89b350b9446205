"""Policy optimisation against the reward model with TRL's RLOOTrainer (default) or GRPOTrainer.

The SFT model is the policy and, frozen (TRL loads a second copy from its folder when beta > 0), the
reference the KL leash ties it to: a `beta` of 0 is refused, since without it nothing stops the policy from
drifting wherever the reward model is wrong. It practises on the preference set's prompts (prompt-only
conversations); each completion is scored by the reward model trained before it (`RewardModel`, either kind:
the SFT backbone reading the chat, or an encoder reading (answer, context) with its own tokenizer; or by
Python reward functions, for tests). The run's health (reward vs KL, completion length, reward-length correlation)
is assessed at the end: `PolicyResult.health.alarm` flags likely reward hacking. With a gold set (held-out
prompts with reference answers: simulated preferences), the policy's greedy answers are scored by the proxy
and the gold judge every `rlhf.gold.every` steps (lifecycle/align/gold.py), and the proxy rising while gold
falls sets off the alarm too. With `rlhf.policy.peft` a LoRA adapter trains and the reference is the same
model with the adapter disabled (lifecycle/lora.py). A killed run, re-run with the same checkpoint folder,
resumes from its newest checkpoint.

    train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
    result = train_policy(cfg, sft_dir, reward_dir, unique_prompts(train, 256), out_dir, ckpt_dir, hook,
                          gold=gold_set(held_out, cfg.rlhf.gold))
    result.metrics["reward_last"], result.metrics["gold_last"], result.health.alarm   # out_dir/policy
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase, PrinterCallback

from lifecycle.align.callbacks import MetricsCallback, MetricsHook
from lifecycle.align.gold import GoldMonitor, GoldSet, fit_gold_prompts, gold_note, json_ready, reward_proxy
from lifecycle.align.health import HealthMonitor, HealthReport, LengthTracker, RewardFunc, assess
from lifecycle.align.reward_model import RewardModel
from lifecycle.align.sealing import SealCheckpoints, last_intact_checkpoint
from lifecycle.config import Config
from lifecycle.config.loader import describe
from lifecycle.config.passthrough import trainer_config
from lifecycle.errors import ConfigError, InputError
from lifecycle.lora import LoraSettings, load_for_training, lora_settings, save_trained, trainable_share
from lifecycle.model import context_window, load_causal_lm
from lifecycle.tokenizer import chat_ids, stop_token_ids

log = logging.getLogger("lifecycle.rlhf.policy")
Messages = list[dict[str, str]]
METHODS = ("rloo", "grpo")


@dataclass(frozen=True)
class PolicyResult:
    metrics: dict[str, float]
    health: HealthReport


def policy_args(cfg: Config, ckpt_dir: Path, method: str) -> Any:
    """trl.RLOOConfig or trl.GRPOConfig from `rlhf.policy.<method>` (passed through) and what the stage owns;
    a beta <= 0 (no KL leash; GRPO's default) is a ConfigError."""
    import trl

    if method not in METHODS:
        raise ConfigError("invalid configuration:\n" + describe(
            "rlhf.method", method, f"policy optimisation runs one of {', '.join(METHODS)}", cfg._origin))
    cls = trl.RLOOConfig if method == "rloo" else trl.GRPOConfig
    forced = {"output_dir": str(ckpt_dir), "report_to": "none", "seed": cfg.run.seed}
    args = trainer_config(cls, cfg, f"rlhf.policy.{method}", cfg.rlhf.device, forced)
    if args.beta <= 0:
        path = f"rlhf.policy.{method}.beta"
        raise ConfigError("invalid configuration:\n" + describe(
            path, args.beta, "the KL coefficient must be > 0: without the leash to the SFT model the policy is free "
                             f"to exploit the reward model ({cls.__name__}'s default is {cls.beta})", cfg._origin))
    return args


def policy_lora(cfg: Config) -> LoraSettings | None:
    """`rlhf.policy.peft` as LoRA settings (None: full fine-tuning); a ConfigError names a bad key."""
    return lora_settings(cfg, "rlhf.policy", cfg.rlhf.device)


def fit_prompts(prompts: list[Messages], tokenizer: PreTrainedTokenizerBase, window: int,
                completion_length: int, limit: int) -> list[Messages]:
    """The first `limit` prompts that leave room for a full completion in the model's context."""
    fitting = [p for p in prompts if len(chat_ids(tokenizer, p, add_generation_prompt=True)) + completion_length
               <= window]
    if len(fitting) < len(prompts):
        log.info("policy: %d of %d prompts dropped: longer than the context (%d) less max_completion_length (%d)",
                 len(prompts) - len(fitting), len(prompts), window, completion_length)
    if not fitting:
        raise InputError(f"policy: none of the {len(prompts)} prompts fits the policy's context of {window} tokens "
                         f"with max_completion_length {completion_length}")
    return fitting[:limit]


def build_trainer(cfg: Config, sft_dir: Path, reward_funcs: Sequence[RewardFunc], prompts: list[Messages],
                  ckpt_dir: Path, on_metrics: MetricsHook | None = None,
                  gold: GoldSet | None = None) -> tuple[Any, HealthMonitor, GoldMonitor]:
    """The RLOO/GRPO trainer with its health monitor and its gold monitor (which measures nothing without
    gold prompts)."""
    import trl

    method = cfg.rlhf.method
    args = policy_args(cfg, ckpt_dir, method)
    lora = policy_lora(cfg)  # LoRA: the reference is the model with its adapter disabled, no second copy
    model, tokenizer = load_for_training(sft_dir, lora)  # else its folder is where TRL loads the reference from
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)  # the assistant's turn ends at <|im_end|>
    window = context_window(model, tokenizer)
    prompts = fit_prompts(prompts, tokenizer, window, args.max_completion_length, cfg.rlhf.policy.max_prompts)
    tracker = LengthTracker(args.reward_weights)
    monitor = HealthMonitor(tracker, on_metrics)
    held_out = fit_gold_prompts(gold.prompts, tokenizer, window, cfg.rlhf.gold.max_new_tokens) if gold else []
    # the functions themselves, not the tracker's wrappers: held-out scores stay out of the length statistics
    gold_monitor = GoldMonitor(held_out, tokenizer, cfg.rlhf.gold, reward_proxy(reward_funcs, args.reward_weights),
                               on_metrics)
    cls = trl.RLOOTrainer if method == "rloo" else trl.GRPOTrainer
    trainer = cls(model=model, reward_funcs=tracker.wrap(reward_funcs), args=args, processing_class=tokenizer,
                  train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
                  callbacks=[MetricsCallback(on_metrics, prefix="rlhf/policy", logger=log), monitor, gold_monitor,
                             SealCheckpoints()], peft_config=lora.config if lora else None)
    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: MetricsCallback logs them instead
    for func in reward_funcs:
        if isinstance(func, RewardModel):
            func.to(trainer.accelerator.device)
    if trainer.ref_model is not None:  # beta > 0: there is one, unless LoRA (the gold monitor disables the adapter)
        gold_monitor.reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    return trainer, monitor, gold_monitor


def train_policy(cfg: Config, sft_dir: Path, reward_dir: Path | None, prompts: list[Messages], out_dir: Path,
                 ckpt_dir: Path, on_metrics: MetricsHook | None = None,
                 reward_funcs: Sequence[RewardFunc] | None = None, gold: GoldSet | None = None) -> PolicyResult:
    """Optimise the SFT model in `sft_dir` against the reward model in `reward_dir` (or `reward_funcs`),
    measuring it against the gold judge on `gold`'s held-out prompts; write out_dir/policy (model + tokenizer)
    and out_dir/policy_health.json (the health report with the training and gold histories)."""
    if reward_funcs is None:
        if reward_dir is None:
            raise ConfigError("policy: no reward model folder and no reward functions were given")
        reward_funcs = [RewardModel.load(reward_dir)]
    trainer, monitor, gold_monitor = build_trainer(cfg, sft_dir, reward_funcs, prompts, ckpt_dir, on_metrics, gold)
    resume = last_intact_checkpoint(ckpt_dir, log)
    if resume:
        log.info("policy: resuming from %s", resume)
    share = trainable_share(trainer.model)
    output = trainer.train(resume_from_checkpoint=resume)
    health = assess(monitor.history, cfg.rlhf.health, gold_monitor.history, cfg.rlhf.gold,
                    [gold_note(gold, gold_monitor)])
    metrics = {"steps": float(output.global_step), "resumed": float(bool(resume)),
               "prompts": float(len(trainer.train_dataset))} | share | health.summary
    main = trainer.is_world_process_zero()  # under torchrun, global rank 0 alone writes
    final, partial = out_dir / "policy", out_dir / "policy.partial"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    save_trained(trainer, partial, policy_lora(cfg), sft_dir, lambda d: load_causal_lm(d)[0])  # the main process
    if main:
        trainer.processing_class.save_pretrained(str(partial))  # with the chat template the policy answers in
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        report = {"metrics": metrics, "alarm": health.alarm, "reasons": health.reasons, "notes": health.notes,
                  "history": [asdict(p) for p in monitor.history], "gold": [asdict(p) for p in gold_monitor.history]}
        (out_dir / "policy_health.json").write_text(json.dumps(json_ready(report), indent=2))
    trainer.accelerator.wait_for_everyone()
    log.info("policy (%s): reward %.4g -> %.4g, KL max %.4g, length %.4g -> %.4g; held-out proxy %.4g -> %.4g, "
             "gold %.4g -> %.4g%s", cfg.rlhf.method, metrics["reward_first"], metrics["reward_last"], metrics["kl_max"],
             metrics["length_first"], metrics["length_last"], metrics["proxy_first"], metrics["proxy_last"],
             metrics["gold_first"], metrics["gold_last"], ": ALARM" if health.alarm else "")
    return PolicyResult(metrics=metrics, health=health)


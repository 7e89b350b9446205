"""Proxy vs gold while the policy trains (Gao et al., 2022, "Scaling laws for reward model
over-optimisation"): the reward model is a proxy for what the preferences were about; with simulated
preferences that criterion is known (ROUGE-L F of an answer against the prompt's reference answer: the
simulated judges' rule without their noise), so it is the gold judge the proxy can be checked against.

Every `rlhf.gold.every` optimizer steps, before the first update (step 0) and at the last step, `GoldMonitor`
answers the held-out prompts greedily (prompts of held-out pairs: neither the reward model, nor DPO, nor the
policy trained on them) and logs, at that step, through `on_metrics`:
- `rlhf/gold/proxy`: the mean proxy reward of those answers: the reward model's score (RLOO/GRPO), or for
  DPO its implicit reward beta * log(pi(answer) / pi_ref(answer)) (DPO has no reward model);
- `rlhf/gold/gold`: their mean ROUGE-L F against the references;
- `rlhf/gold/kl`: KL(policy || reference), measured: the exact KL of the two next-token distributions at each
  token of the greedy answers, averaged over those tokens (the same on RLOO and DPO, 0 at step 0; the
  trainer's own `kl` is a sampled estimate on training prompts, logged as `rlhf/health/kl`);
- `rlhf/gold/length`: their mean length in tokens.
The points are kept in the trainer's log history too, so a run resumed from a checkpoint keeps its curve.

    gold = gold_set(held_out_rows, cfg.rlhf.gold)         # prompts + references, or a note saying why none
    monitor = GoldMonitor(gold.prompts, tokenizer, cfg.rlhf.gold, reward_proxy(funcs), on_metrics)
    trainer = trl.RLOOTrainer(..., callbacks=[monitor]); monitor.reference = trainer.ref_model
    trainer.train(); monitor.history                      # [GoldPoint(step=0, ...), GoldPoint(step=10, ...), ...]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from lifecycle.align.callbacks import MetricsHook
from lifecycle.config.rlhf import GoldConfig
from lifecycle.text import rouge_l
from lifecycle.hashing import hash_json
from lifecycle.model import right_pad
from lifecycle.tokenizer import chat_ids, stop_token_ids

log = logging.getLogger("lifecycle.rlhf.gold")
Messages = list[dict[str, str]]
NAN = float("nan")
PREFIX = "rlhf/gold"
LOG_KEY = "gold/point"  # a trainer log-history entry holding a GoldPoint: saved with each checkpoint
JUDGED_BY_REFERENCE = "simulated"  # the preference source whose votes followed the references


@dataclass(frozen=True)
class GoldPrompt:
    prompt: Messages
    reference: str


@dataclass(frozen=True)
class GoldSet:
    prompts: list[GoldPrompt]
    note: str  # why there is no gold curve ("" when there are prompts)


@dataclass(frozen=True)
class GoldPoint:
    step: int
    gold: float  # mean ROUGE-L F of the greedy answers against the references
    proxy: float = NAN  # mean proxy reward of the same answers (NaN: no proxy)
    kl: float = NAN  # mean per-token KL(policy || reference) along them (NaN: no reference)
    length: float = NAN  # mean answer length, tokens


@dataclass(frozen=True)
class Proxy:
    """What the policy is optimised for, as a score of answers: `score(prompts, texts, answer_ids, log_ratios)`
    (log_ratios: log pi(answer) - log pi_ref(answer) per answer, NaN without a reference)."""
    name: str
    score: Callable[[list[Messages], list[str], list[list[int]], list[float]], list[float]]


def gold_set(held_out: Sequence[dict[str, Any]], settings: GoldConfig) -> GoldSet:
    """The distinct held-out prompts (stable order, by hash) whose pairs the simulated judges decided by a
    reference answer, at most `settings.prompts`; with none, a note naming why."""
    found: dict[str, GoldPrompt] = {}
    for row in held_out:
        reference = row.get("reference")
        if row.get("source") == JUDGED_BY_REFERENCE and isinstance(reference, str) and reference.strip():
            found.setdefault(hash_json(row["prompt"]), GoldPrompt(row["prompt"], reference))
    prompts = [found[k] for k in sorted(found)][:settings.prompts]
    if prompts:
        return GoldSet(prompts, "")
    sources = sorted({str(r.get("source")) for r in held_out})
    if settings.prompts == 0:
        note = "no gold curve: rlhf.gold.prompts is 0"
    elif not held_out:
        note = "no gold curve: the preference set has no held-out prompts (rlhf.held_out_fraction)"
    elif JUDGED_BY_REFERENCE in sources:
        note = ("no gold curve: the held-out simulated pairs carry no reference answer (a preference snapshot "
                "exported before references were kept: re-run the preferences stage)")
    else:
        note = (f"no gold curve: the held-out pairs were judged by {', '.join(sources)}, not by the simulated "
                "judges, so there is no known criterion to score against; with people the gold signal is people "
                "(the human evaluation round)")
    return GoldSet([], note)


def fit_gold_prompts(prompts: list[GoldPrompt], tokenizer: PreTrainedTokenizerBase, window: int,
                     max_new_tokens: int) -> list[GoldPrompt]:
    """The prompts that leave room for a full answer in the model's context."""
    fitting = [p for p in prompts if len(chat_ids(tokenizer, p.prompt, add_generation_prompt=True)) + max_new_tokens
               <= window]
    if len(fitting) < len(prompts):
        log.info("gold: %d of %d held-out prompts dropped: longer than the context (%d) less max_new_tokens (%d)",
                 len(prompts) - len(fitting), len(prompts), window, max_new_tokens)
    return fitting


def reward_proxy(funcs: Sequence[Callable[..., list[float | None]]], weights: Sequence[float] | None = None) -> Proxy:
    """The policy's reward functions (weighted as the trainer weighs them) called as TRL calls them."""
    weights = list(weights) if weights else [1.0] * len(funcs)

    def score(prompts: list[Messages], texts: list[str], answer_ids: list[list[int]],
              log_ratios: list[float]) -> list[float]:
        completions = [[{"role": "assistant", "content": t}] for t in texts]
        total = np.zeros(len(texts))
        for func, weight in zip(funcs, weights, strict=True):
            values = func(prompts=prompts, completions=completions, completion_ids=answer_ids)
            total += weight * np.array([NAN if v is None else float(v) for v in values])
        return total.tolist()

    names = ", ".join(getattr(f, "__name__", type(f).__name__) for f in funcs)
    return Proxy(f"reward ({names})", score)


def dpo_proxy(beta: float) -> Proxy:
    """DPO's implicit reward of an answer: beta * log(pi(answer | prompt) / pi_ref(answer | prompt))."""
    return Proxy(f"DPO implicit reward (beta {beta:g} x log-ratio to the reference)",
                 lambda prompts, texts, ids, log_ratios: [beta * r for r in log_ratios])


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Messages],
                   max_new_tokens: int, batch_size: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids up to and including the stop token) per prompt: greedy, left-padded batches."""
    stop, pad = stop_token_ids(tokenizer), tokenizer.pad_token_id
    pad = pad if pad is not None else stop[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    found: list[tuple[list[int], list[int]]] = []
    for begin in range(0, len(prompts), batch_size):
        ids = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts[begin:begin + batch_size]]
        width = max(map(len, ids))
        batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=batch, attention_mask=mask, generation_config=config)  # (b, width + new)
        for prompt, row in zip(ids, out[:, width:].tolist(), strict=True):
            end = next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
            found.append((prompt, row[:end]))
    return found


def answer_divergence(model: PreTrainedModel, reference: PreTrainedModel | None,
                      seqs: list[tuple[list[int], list[int]]], pad_id: int,
                      batch_size: int) -> tuple[list[float], list[float]]:
    """Per answer: (the summed KL(policy || reference) of the next-token distributions at its tokens, the summed
    log pi - log pi_ref of its tokens); NaNs without a reference. `reference=None` on a PEFT model: the model
    with its adapter disabled."""
    adapter_off = getattr(model, "disable_adapter", None) if reference is None else None
    if reference is None and adapter_off is None:
        return [NAN] * len(seqs), [NAN] * len(seqs)
    kls: list[float] = []
    ratios: list[float] = []
    for begin in range(0, len(seqs), batch_size):
        batch = seqs[begin:begin + batch_size]
        ids, mask = right_pad([p + a for p, a in batch], pad_id)
        answer = torch.zeros_like(ids, dtype=torch.bool)
        for i, (prompt, ans) in enumerate(batch):
            answer[i, len(prompt):len(prompt) + len(ans)] = True
        at = answer[:, 1:]  # (b, t-1): position j predicts token j + 1
        row = at.nonzero()[:, 0]  # (n,) the answer each predicted token belongs to
        targets = ids[:, 1:][at]  # (n,)

        def logps(m: PreTrainedModel) -> torch.Tensor:
            with torch.inference_mode():
                logits = m(input_ids=ids.to(m.device), attention_mask=mask.to(m.device)).logits[:, :-1]
            return logits[at.to(logits.device)].float().log_softmax(-1).cpu()  # (n, vocab)

        policy = logps(model)
        with adapter_off() if adapter_off else nullcontext():
            ref = logps(reference if reference is not None else model)
        kl = (policy.exp() * (policy - ref)).sum(-1)  # (n,)
        ratio = (policy - ref).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n,)
        kls += torch.zeros(len(batch)).index_add_(0, row, kl).tolist()
        ratios += torch.zeros(len(batch)).index_add_(0, row, ratio).tolist()
    return kls, ratios


def measure_gold(model: PreTrainedModel, reference: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
                 prompts: list[GoldPrompt], proxy: Proxy | None, settings: GoldConfig, step: int) -> GoldPoint:
    """One point of the curves: the policy's greedy answers to `prompts`, scored by gold, proxy and KL."""
    training = model.training
    model.eval()
    try:
        seqs = greedy_answers(model, tokenizer, [p.prompt for p in prompts], settings.max_new_tokens,
                              settings.batch_size)
        texts = [tokenizer.decode(answer, skip_special_tokens=True).strip() for _, answer in seqs]
        kls, ratios = answer_divergence(model, reference, seqs, tokenizer.pad_token_id or 0, settings.batch_size)
        scores = proxy.score([p.prompt for p in prompts], texts, [a for _, a in seqs], ratios) if proxy else []
    finally:
        model.train(training)
    lengths = [len(a) for _, a in seqs]
    return GoldPoint(step=step, gold=float(np.mean([rouge_l(t, p.reference) for t, p in zip(texts, prompts)])),
                     proxy=_mean(scores), kl=float(np.sum(kls) / max(1, sum(lengths))), length=float(np.mean(lengths)))


class GoldMonitor(TrainerCallback):
    """Measures a GoldPoint at step 0, every `settings.every` steps and at the last step (on the main process);
    `reference` (the trainer's frozen reference model) is set once the trainer exists."""

    def __init__(self, prompts: list[GoldPrompt], tokenizer: PreTrainedTokenizerBase, settings: GoldConfig,
                 proxy: Proxy | None, on_metrics: MetricsHook | None = None, prefix: str = PREFIX) -> None:
        self.prompts, self.tokenizer, self.settings, self.proxy = prompts, tokenizer, settings, proxy
        self.on_metrics, self.prefix = on_metrics, prefix
        self.reference: PreTrainedModel | None = None
        self.history: list[GoldPoint] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: PreTrainedModel | None = None,
                       **kwargs: Any) -> None:
        # a resumed run's state holds the log history up to its checkpoint, the points with it
        self.history = [GoldPoint(**entry[LOG_KEY]) for entry in state.log_history if LOG_KEY in entry]
        if not self.history and state.global_step == 0:
            self._measure(model, state)

    def on_step_end(self, args: Any, state: Any, control: Any, model: PreTrainedModel | None = None,
                    **kwargs: Any) -> None:
        if state.global_step % self.settings.every == 0 or state.global_step >= state.max_steps:
            self._measure(model, state)

    def on_train_end(self, args: Any, state: Any, control: Any, model: PreTrainedModel | None = None,
                     **kwargs: Any) -> None:
        if self.history and self.history[-1].step != state.global_step:  # training stopped off the schedule
            self._measure(model, state)

    def _measure(self, model: PreTrainedModel | None, state: Any) -> None:
        if not self.prompts or model is None or not state.is_world_process_zero:
            return  # under torchrun: global rank 0 alone (plain DDP: no collective runs in here)
        point = measure_gold(model, self.reference, self.tokenizer, self.prompts, self.proxy, self.settings,
                             state.global_step)
        self.history.append(point)
        state.log_history.append({"step": point.step, LOG_KEY: asdict(point)})
        log.info("gold: step %d: proxy %.4g, gold %.4g, KL %.4g, length %.3g (%d held-out prompts)", point.step,
                 point.proxy, point.gold, point.kl, point.length, len(self.prompts))
        if self.on_metrics:
            self.on_metrics({f"{self.prefix}/{k}": v for k, v in asdict(point).items()
                             if k != "step" and not math.isnan(v)}, point.step)


def gold_note(gold: GoldSet | None, monitor: GoldMonitor) -> str:
    """What a run's gold curve measured, or why it has none (a line of the health report)."""
    if gold is None:
        return "no gold curve: no held-out prompts were given"
    if not gold.prompts:
        return gold.note
    if not monitor.prompts:
        return (f"no gold curve: none of the {len(gold.prompts)} held-out prompts leaves room for "
                f"{monitor.settings.max_new_tokens} answer tokens in the context")
    return (f"gold curve: greedy answers to {len(monitor.prompts)} held-out prompts at step 0, every "
            f"{monitor.settings.every} steps and at the last, scored by ROUGE-L F against their reference answers "
            f"(the simulated judges' criterion without their noise); proxy: "
            f"{monitor.proxy.name if monitor.proxy else 'none'}; KL: mean per-token KL(policy || reference) along "
            "those answers")


def json_ready(value: Any) -> Any:
    """NaN (a number never measured) -> null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else NAN

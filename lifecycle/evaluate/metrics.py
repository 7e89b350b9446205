"""The candidate against the champion (and the SFT and base models) on the same held-out data:

- bits per byte and perplexity on validation text, each model reading it with its own tokenizer;
- ROUGE-L of answers to held-out python-docs questions against their reference answers, asked with the
  chunks retrieved from the run's index and without (the same metric: the gain from retrieval is a number);
- the reward model's win rate of the candidate's answers against the champion's and the SFT model's;
- generation latency (p50 of single requests) and tokens/s;
- a table of answers side by side;
- with conf/evaluate.yaml `harness` on, the standard benchmarks it names, through lm-evaluation-harness
  (harness.py), each model's scores with their standard errors;
- what the intervals need (compare.py, which also documents evaluation.json): ROUGE-L per question, bits per
  validation text, reward margins per question; and the intervals and comparisons themselves.

Each model's measurements (per question and per text too) are saved in the stage's checkpoint folder as it
finishes: a run killed half way resumes with the models it has not measured yet, and its intervals are the
ones a clean run gives.

    questions = held_out_questions(cfg, documents, tokenizer)
    result = evaluate_models(cfg, {"candidate": dir, "champion": dir2, "sft": dir3, "base": dir4}, questions,
                             documents, retriever, reward_dir, device, ckpt_dir)   # evaluation.json
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifecycle.align.sft import generate_answers
from lifecycle.align.sft_data import Pair, build_pairs, fit_pairs
from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.evaluate.compare import interval_sections
from lifecycle.evaluate.harness import run_harness
from lifecycle.text import rouge_l
from lifecycle.hashing import hash_json
from lifecycle.model import context_window, evaluating, load_causal_lm
from lifecycle.rag.answer import fit_prompt
from lifecycle.rag.prompt import rag_messages
from lifecycle.rag.search import Hit, Retriever
from lifecycle.resume import Parts
from lifecycle.tokenizer import stop_token_ids, use_system_prompt

log = logging.getLogger("lifecycle.evaluate")
ROLES = ("candidate", "champion", "sft", "base")
TURN_END = 4  # tokens closing an assistant turn in the chat template
Messages = list[dict[str, str]]
PART_FORMAT = 2  # a saved part holds per-question ROUGE-L and per-text bits (format 1, without them, is re-measured)


@dataclass
class Answers:
    rag: list[str]
    rag_prompts: list[Messages]
    no_rag: list[str] | None = None


def held_out_questions(cfg: Config, documents: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                       window: int) -> list[Pair]:
    """Held-out python-docs pairs (their documents are in the validation split: never trained on), minus the
    ones the preferences stage asked as prompts (the reward model learnt from those)."""
    _, held_out = build_pairs(cfg.sft.data, documents)
    fitted, _ = fit_pairs([p for p in held_out if p.source == "python-docs"], tokenizer, window)
    ranked = sorted(fitted, key=lambda p: p.id)
    rest = ranked[cfg.preferences.prompts.held_out:]
    if len(rest) < cfg.evaluate.questions:
        log.warning("evaluate: only %d held-out questions are not preference prompts; %d of them overlap",
                    len(rest), min(len(ranked), cfg.evaluate.questions) - len(rest))
        rest = (rest + ranked)[:cfg.evaluate.questions]
    if not rest:
        raise LifecycleError("evaluate: no held-out python-docs questions (the ingested corpus has no python-docs "
                             "documents in its validation split)")
    return rest[:cfg.evaluate.questions]


def text_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
              batch_size: int) -> tuple[dict[str, float], list[float]]:
    """({"val_bpb", "perplexity"}, bits of each text): the texts (EOS-separated) in blocks of the model's
    context, every token after a block's first predicted; bits per byte uses the UTF-8 bytes of the texts
    (`text_bytes`), so tokenizers compare. A token no block predicts counts at the mean loss: the texts' bits
    sum to the total behind val_bpb, and bits per byte is sum(bits) / sum(bytes) resampled over texts."""
    window = context_window(model, tokenizer)
    ids: list[int] = []
    owner: list[int] = []  # the text each token belongs to
    for i, text in enumerate(texts):
        row = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += row
        owner += [i] * len(row)
    starts = [s for s in range(0, len(ids), window) if len(ids) - s > 1]  # a last block of one token predicts none
    owners = torch.tensor(owner)
    nats = torch.zeros(len(texts), dtype=torch.float64)
    predicted = torch.zeros(len(texts), dtype=torch.float64)
    with evaluating(model), torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            batch = starts[first:first + batch_size]
            for length in sorted({min(window, len(ids) - s) for s in batch}):  # the last block is short
                picked = [s for s in batch if min(window, len(ids) - s) == length]
                x = torch.tensor([ids[s:s + length] for s in picked], device=model.device)  # (b, length)
                logits = model(input_ids=x).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                         reduction="none")  # (b * (length - 1),)
                who = torch.cat([owners[s + 1:s + length] for s in picked])
                nats.index_add_(0, who, loss.double().cpu())
                predicted.index_add_(0, who, torch.ones_like(who, dtype=torch.float64))
    per_token = float(nats.sum() / max(float(predicted.sum()), 1.0))
    bits = (nats + (torch.bincount(owners, minlength=len(texts)) - predicted) * per_token) / math.log(2)
    return ({"val_bpb": float(bits.sum()) / sum(text_bytes(texts)),
             "perplexity": math.exp(per_token) if per_token < 700 else math.inf},  # a broken model overflows exp
            bits.tolist())


def text_bytes(texts: list[str]) -> list[int]:
    """UTF-8 bytes of each text and its separator: the denominator of bits per byte."""
    return [len(t.encode("utf-8")) + 1 for t in texts]


def rag_prompts(tokenizer: PreTrainedTokenizerBase, window: int, questions: list[Pair], hits: list[list[Hit]],
                system_prompt: str | None, max_new_tokens: int) -> list[Messages]:
    """Each question with as many of its retrieved chunks as fit the model's context (lifecycle ask's prompt)."""
    prompts = []
    for pair, found in zip(questions, hits, strict=True):
        # room for the answer and the end-of-turn markup the reward model reads after it
        _, used, _ = fit_prompt(tokenizer, pair.question, found, system_prompt, window - max_new_tokens - TURN_END)
        prompts.append(rag_messages(pair.question, [(h.title, h.text) for h in used], system_prompt))
    return prompts


def answer_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Config, questions: list[Pair],
               hits: list[list[Hit]], without: bool, label: str) -> Answers:
    window, ev = context_window(model, tokenizer), cfg.evaluate
    system = cfg.serve.answer.system_prompt
    prompts = rag_prompts(tokenizer, window, questions, hits, system, ev.max_new_tokens)
    out = Answers(rag=generate_answers(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size,
                                       label=f"evaluate: {label} answers with retrieval"), rag_prompts=prompts)
    if without:
        bare = [rag_messages(p.question, [], system) for p in questions]
        out.no_rag = generate_answers(model, tokenizer, bare, ev.max_new_tokens, ev.batch_size,
                                      label=f"evaluate: {label} answers without retrieval")
    return out


def time_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Messages],
                    max_new_tokens: int) -> dict[str, float]:
    """{"latency_p50_ms", "tokens_per_s"} of single greedy requests (a served request's generation)."""
    stop = stop_token_ids(tokenizer)
    window = context_window(model, tokenizer)
    times, tokens = [], 0
    with evaluating(model), torch.inference_mode():
        for messages in prompts:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            x = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            started = time.perf_counter()
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, eos_token_id=stop,
                                 max_new_tokens=max(1, min(max_new_tokens, window - x.shape[1])),
                                 pad_token_id=tokenizer.pad_token_id)
            times.append(time.perf_counter() - started)
            tokens += out.shape[1] - x.shape[1]
    return {"latency_p50_ms": 1000 * statistics.median(times), "tokens_per_s": tokens / sum(times)}


def reward_margins(reward_dir: Path, prompts: list[Messages], ours: list[str], theirs: list[str],
                   device: torch.device | str = "cpu") -> list[float | None]:
    """Per prompt the reward model's score (either kind: lifecycle/align/reward_model.py) of our answer minus its
    score of theirs; None where the pair does not fit a chat reward model's context."""
    from lifecycle.align.reward_model import RewardModel

    reward = RewardModel.load(reward_dir).to(device)
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": b}]} for p, a, b in zip(prompts, ours, theirs, strict=True)]
    kept = [row for row in rows if reward.fits(row)]
    scored = dict(zip(map(id, kept), reward.margins(kept, batch_size=16), strict=True))
    if not kept:
        log.warning("evaluate: no answer pair fits the reward model's context: no win rate")
    return [scored.get(id(row)) for row in rows]


def win_share(margins: list[float | None]) -> float | None:
    """Share of the scored prompts where our answer wins (ties count half); None when none was scored."""
    found = [m for m in margins if m is not None]
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in found) / len(found) if found else None


def load_model(path: Path, device: torch.device, system_prompt: str | None) -> tuple[PreTrainedModel,
                                                                                    PreTrainedTokenizerBase]:
    model, tokenizer = load_causal_lm(path)
    if not getattr(tokenizer, "chat_template", None):  # the base model: SFT's template, as the sft stage compares
        use_system_prompt(tokenizer, system_prompt)
    return model.to(device), tokenizer


def measure_model(cfg: Config, path: Path, role: str, questions: list[Pair], texts: list[str],
                  hits: list[list[Hit]], device: torch.device) -> dict[str, Any]:
    """One model's part: {"metrics", "answers", "rouge_l" (per question, by "rag"/"no_rag"), "bits" (per text),
    "harness" (its scores, harness.py; with the harness on)}."""
    model, tokenizer = load_model(path, device, cfg.sft.data.system_prompt)
    found, bits = text_loss(model, tokenizer, texts, cfg.evaluate.batch_size)
    answers = answer_all(model, tokenizer, cfg, questions, hits, role in ("candidate", "champion"), role)
    references = [p.answer for p in questions]
    scores = {"rag": list(map(rouge_l, answers.rag, references))}
    found["rouge_l_rag"] = sum(scores["rag"]) / len(references)
    if answers.no_rag is not None:
        scores["no_rag"] = list(map(rouge_l, answers.no_rag, references))
        found["rouge_l_no_rag"] = sum(scores["no_rag"]) / len(references)
        found["rag_gain"] = found["rouge_l_rag"] - found["rouge_l_no_rag"]
        found |= time_generation(model, tokenizer, answers.rag_prompts[:cfg.evaluate.latency_requests],
                                 cfg.evaluate.max_new_tokens)
    log.info("evaluate: %s: %s", role, ", ".join(f"{k} {v:.3f}" for k, v in found.items()))
    part = {"metrics": found, "answers": asdict(answers), "rouge_l": scores, "bits": bits}
    if cfg.evaluate.harness_tasks:
        part["harness"] = run_harness(model, tokenizer, cfg.evaluate.harness, cfg.evaluate.intervals)
    return part


def evaluate_models(cfg: Config, models: dict[str, Path], questions: list[Pair], texts: list[str],
                    retriever: Retriever, reward_dir: Path | None, device: torch.device,
                    checkpoints: Path | None = None) -> dict[str, Any]:
    """{"metrics": {role: {...}}, "samples": [...], "prompts": n, "per_question", "per_text", "intervals",
    "comparisons", "harness" (with the harness on), "resumed_models": n} for the roles in `models` (ROLES); the
    schema is in lifecycle/evaluate/compare.py. With a `checkpoints` folder each model's measurements (per
    question and per text, harness scores too) are saved there as it finishes, and a re-run after a kill reads
    them back instead of measuring that model again."""
    hits = [retriever.search(p.question, k=cfg.serve.answer.top_k) for p in questions]
    roles = [r for r in ROLES if r in models]
    expect = {role: {"model": str(models[role]), "questions": hash_json([[p.id, p.question] for p in questions]),
                     "texts": hash_json(texts), "hits": hash_json([[h.chunk_id for h in found] for found in hits]),
                     "part": PART_FORMAT} | harness_settings(cfg) for role in roles}
    parts = Parts(checkpoints, "model", log) if checkpoints is not None else None
    saved = parts.load_json(expect) if parts else {}
    measured = dict(saved)
    for role in (r for r in roles if r not in saved):
        measured[role] = measure_model(cfg, models[role], role, questions, texts, hits, device)
        if parts:
            parts.save_json(role, measured[role], expect[role])
    answers = {role: Answers(**measured[role]["answers"]) for role in roles}
    metrics = {role: measured[role]["metrics"] for role in roles}
    margins = {}
    if reward_dir is not None:
        for other in (r for r in ("champion", "sft") if r in answers):
            margins[other] = reward_margins(reward_dir, answers["candidate"].rag_prompts, answers["candidate"].rag,
                                            answers[other].rag, device)
            if (rate := win_share(margins[other])) is not None:
                metrics["candidate"][f"win_rate_vs_{other}"] = rate
    evaluation = {"metrics": metrics, "samples": sample_rows(questions[:cfg.evaluate.samples], answers),
                  "prompts": len(questions),
                  "per_question": {"ids": [p.id for p in questions],
                                   **{f"rouge_l_{kind}": {r: measured[r]["rouge_l"][kind] for r in roles
                                                          if kind in measured[r]["rouge_l"]}
                                      for kind in ("rag", "no_rag")},
                                   "reward_margin": margins},
                  "per_text": {"bytes": text_bytes(texts), "bits": {r: measured[r]["bits"] for r in roles}}}
    if cfg.evaluate.harness_tasks:
        evaluation["harness"] = {part: {role: measured[role]["harness"][part] for role in roles}
                                 for part in ("scores", "tasks", "seconds")}
    return evaluation | interval_sections(evaluation, cfg.evaluate.intervals) | {"resumed_models": len(saved)}


def harness_settings(cfg: Config) -> dict[str, str]:
    """What a saved part's harness scores were measured with, for its header (a part measured otherwise, or
    without them, is measured again); nothing with the harness off. The task files' content is in the
    stage's key (harness.harness_files)."""
    if not cfg.evaluate.harness_tasks:
        return {}
    return {"harness": hash_json({"harness": cfg.evaluate.harness.model_dump(mode="json"),
                                  "intervals": cfg.evaluate.intervals.model_dump(mode="json")})}


def sample_rows(questions: list[Pair], answers: dict[str, Answers]) -> list[dict[str, str]]:
    """The first questions with every model's answer (with retrieval) and the candidate's without."""
    samples = []
    for i, pair in enumerate(questions):
        row = {"question": pair.question, "reference": pair.answer} | {role: a.rag[i] for role, a in answers.items()}
        if answers["candidate"].no_rag is not None:
            row["candidate_no_rag"] = answers["candidate"].no_rag[i]
        samples.append(row)
    return samples


def validation_texts(documents: list[dict[str, Any]], max_bytes: int) -> list[str]:
    """Validation-split documents in id order, up to `max_bytes` of UTF-8: the same text for every model."""
    texts, total = [], 0
    for doc in sorted((d for d in documents if d["split"] == "validation"), key=lambda d: d["id"]):
        if total >= max_bytes:
            break
        texts.append(doc["text"])
        total += len(doc["text"].encode("utf-8"))
    if not texts:
        raise LifecycleError("evaluate: the ingested corpus has no validation documents")
    return texts

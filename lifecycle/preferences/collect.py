"""What the preferences stage puts in front of people: prompts (held-out instruction questions and the
user's own), k sampled answers of the candidate model to each, and comparison items (every pair of
answers to a prompt, plus gold items whose answer is known).

    prompts = build_prompts(cfg, documents)                  # held-out questions carry reference answers
    answers = sample_answers(model, tokenizer, prompts, cfg.preferences.sampling)
    items, skipped = make_items(prompts, answers, gold_items=8)

Sampling: answer i of every prompt is drawn at temperatures[i % len] with torch seeded by seed + i, in
batches, so the same config and model give the same answers. Gold items put a prompt's reference answer
against the reference answer of another prompt (fluent but off-topic): the reference must win. Their
canonical order (a/b) is decided by a hash, so the known answer is "a" for some and "b" for others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifecycle.align.sft import generate_answers
from lifecycle.align.sft_data import build_pairs, fit_pairs
from lifecycle.config import Config
from lifecycle.config.preferences import SamplingConfig
from lifecycle.errors import InputError
from lifecycle.preferences.store import Message, NewItem


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]
    reference: str | None  # a held-out reference answer, when there is one
    origin: str  # "held-out" or FILE:LINE


def build_prompts(cfg: Config, documents: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                  window: int) -> list[Prompt]:
    """Held-out SFT questions (never trained on) that fit the model's context, then the user's prompts."""
    _, held_out = build_pairs(cfg.sft.data, documents)
    held_out, _ = fit_pairs(held_out, tokenizer, window)  # with its reference answer: room to answer
    prompts = [Prompt(tuple(p.prompt), p.answer, "held-out")
               for p in sorted(held_out, key=lambda p: p.id)[:cfg.preferences.prompts.held_out]]
    for name in cfg.preferences.prompts.files:
        prompts += read_prompts(Path(name).expanduser())
    if not prompts:
        raise InputError("preferences: no prompts (preferences.prompts.held_out is 0, or there are no held-out SFT "
                         "pairs, and preferences.prompts.files is empty)")
    return prompts


def read_prompts(path: Path) -> list[Prompt]:
    """JSONL, one {"prompt": "..."} or {"prompt": [messages]} per line."""
    if not path.is_file():
        raise InputError(f"preferences.prompts.files: {path} does not exist")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line).get("prompt") if line.lstrip().startswith("{") else None
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if isinstance(value, str) and value.strip():
            messages: tuple[Message, ...] = ({"role": "user", "content": value},)
        elif isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user",
                                                                                                 "assistant")
                for m in value) and value[-1]["role"] == "user":
            messages = tuple({"role": m["role"], "content": m["content"]} for m in value)
        else:
            raise InputError(f"{where}: expected {{\"prompt\": a non-empty string or a message list ending with a "
                             f"user turn}}, got {line.strip()[:80]}")
        prompts.append(Prompt(messages, None, where))
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


def sample_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
                   sampling: SamplingConfig) -> list[list[str]]:
    """answers[p][i]: answer i to prompt p."""
    columns = []
    for i in range(sampling.responses):
        torch.manual_seed(sampling.seed + i)
        columns.append(generate_answers(model, tokenizer, [list(p.messages) for p in prompts],
                                        sampling.max_new_tokens, temperature=sampling.temperatures[
                                            i % len(sampling.temperatures)], top_p=sampling.top_p,
                                        label=f"preferences: sample answer {i + 1}/{sampling.responses}"))
    return [list(row) for row in zip(*columns, strict=True)]


def make_items(prompts: list[Prompt], answers: list[list[str]], gold_items: int,
               meta: dict[str, Any] | None = None) -> tuple[list[NewItem], int]:
    """(items, pairs skipped because both answers were the same or empty)."""
    items: list[NewItem] = []
    skipped = 0
    for prompt, row in zip(prompts, answers, strict=True):
        for (i, a), (j, b) in itertools.combinations(enumerate(row), 2):
            if not a.strip() or not b.strip() or a.strip() == b.strip():
                skipped += 1
                continue
            items.append(NewItem(prompt.messages, a, b, meta={**(meta or {}), "answers": [i, j],
                                                               "reference": prompt.reference}))
    with_reference = [p for p in prompts if p.reference]
    for n, prompt in enumerate(with_reference[:gold_items] if len(with_reference) > 1 else []):
        other = with_reference[(n + 1) % len(with_reference)].reference or ""
        if other.strip() == (prompt.reference or "").strip():
            continue
        first = int(hashlib.sha256(json.dumps(list(prompt.messages)).encode()).hexdigest(), 16) % 2 == 0
        a, b = (prompt.reference or "", other) if first else (other, prompt.reference or "")
        items.append(NewItem(prompt.messages, a, b, gold="a" if first else "b",
                             meta={"gold": "reference vs another question's answer", "reference": prompt.reference}))
    return items, skipped

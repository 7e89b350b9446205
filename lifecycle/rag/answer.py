"""Retrieval-augmented answers: retrieve the top-k chunks, put as many as fit the model's context into
the RAG prompt (lifecycle/rag/prompt.py, rendered by the model's own chat template), generate greedily
until <|im_end|> or EOS, and return the answer with the sources used. The context length and the chat
template come from the model loaded, never from the configuration profile.

    path, label = resolve_policy(None, cfg.run.models.chat, state_dir)   # --model > @champion > @candidate
    model, tokenizer = load_causal_lm(path)
    answer = answer_question("How do I parse JSON?", retriever, model, tokenizer, cfg.serve.answer)
    answer.text, [s.title for s in answer.sources]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifecycle.config import AnswerConfig
from lifecycle.errors import LifecycleError
from lifecycle.model import context_window
from lifecycle.rag.prompt import rag_messages
from lifecycle.rag.search import Hit, Retriever
from lifecycle.registry import CANDIDATE, CHAMPION, ModelRef, get_alias, local_copy, resolve
from lifecycle.tokenizer import chat_ids, stop_token_ids

log = logging.getLogger("lifecycle.rag.answer")
MIN_NEW_TOKENS = 8


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    sources: list[Hit]  # the chunks that went into the prompt, in its order (reading_order)
    retrieved: int  # chunks retrieved (some may not have fitted)
    prompt: str
    model: str = ""
    truncated: bool = False  # the only source was cut to fit the context

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "model": self.model, "retrieved": self.retrieved,
                "truncated": self.truncated,
                "sources": [{"title": s.title, "path": s.path, "source": s.source, "chunk_id": s.chunk_id,
                             "score": s.score} for s in self.sources]}

    def format(self) -> str:
        cut = "; it was cut to fit" if self.truncated else ""
        lines = [self.text or "(empty answer)", "",
                 f"Sources ({len(self.sources)} of {self.retrieved} retrieved fit the context{cut}):"]
        lines += [f"  [{i}] {s.title}  [{s.source}] {s.path}  ({s.chunk_id})" for i, s in enumerate(self.sources, 1)]
        return "\n".join(lines + ([f"Model: {self.model}"] if self.model else []))


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    return chat_ids(tokenizer, messages, add_generation_prompt=True)


def _pairs(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(h.title, h.text) for h in hits]


def reading_order(hits: list[Hit]) -> list[Hit]:
    """The hits grouped by document, the documents in the order of their best hit, each document's chunks in
    reading order: a document's opening (where a docstring says what the object does) comes before its later
    parts, however the retrievers ranked them."""
    first: dict[str, int] = {}
    for i, hit in enumerate(hits):
        first.setdefault(hit.doc_id, i)
    return sorted(hits, key=lambda h: (first[h.doc_id], h.chunk_index))


def fit_prompt(tokenizer: PreTrainedTokenizerBase, question: str, hits: list[Hit], system_prompt: str | None,
               budget: int) -> tuple[list[int], list[Hit], bool]:
    """(prompt ids, chunks used, truncated): the chunks in reading order, as many as fit `budget` tokens; the
    last one is cut when not even it fits whole."""
    hits = reading_order(hits)
    for n in range(len(hits), 0, -1):
        ids = _encode(tokenizer, rag_messages(question, _pairs(hits[:n]), system_prompt))
        if len(ids) <= budget:
            return ids, hits[:n], False
    bare = _encode(tokenizer, rag_messages(question, [], system_prompt))
    if len(bare) > budget:
        raise LifecycleError(f"the question and system prompt take {len(bare)} tokens, more than the {budget} the "
                             "model's context leaves for them: shorten the question or serve.answer.system_prompt")
    if hits:
        text_ids = tokenizer(hits[0].text, add_special_tokens=False, verbose=False)["input_ids"]
        full = _encode(tokenizer, rag_messages(question, _pairs(hits[:1]), system_prompt))
        keep = len(text_ids) - (len(full) - budget)  # drop the overflow; re-encoding may differ by a token or two
        while keep > 0:
            cut = replace(hits[0], text=tokenizer.decode(text_ids[:keep]))
            ids = _encode(tokenizer, rag_messages(question, _pairs([cut]), system_prompt))
            if len(ids) <= budget:
                return ids, [cut], True
            keep -= max(1, len(ids) - budget)
    return bare, [], False


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int], max_new_tokens: int) -> str:
    """Greedy continuation of `ids`, stopped at the end-of-turn token or EOS."""
    stop = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else None)
    input_ids = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop or None, pad_token_id=pad)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def answer_budget(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, question: str,
                  system_prompt: str | None, max_new_tokens: int, exact: bool = False) -> tuple[int, int]:
    """(context window, tokens the answer may take). The model's own context decides: by default the answer
    gets at most half of what the question leaves (the retrieved context the rest); `exact` asks for
    `max_new_tokens` itself (a client's max_tokens), refused when the question leaves less room than that."""
    window = context_window(model, tokenizer)
    bare = len(_encode(tokenizer, rag_messages(question, [], system_prompt)))
    if exact:
        if max_new_tokens > window - bare:
            raise LifecycleError(f"max_tokens {max_new_tokens}: the question and system prompt take {bare} of the "
                                 f"model's {window} context tokens, leaving {max(window - bare, 0)} for the answer")
        return window, max_new_tokens
    max_new = min(max_new_tokens, (window - bare) // 2)
    if max_new < MIN_NEW_TOKENS:
        raise LifecycleError(f"the question and system prompt take {bare} of the model's {window} context tokens, "
                             f"leaving fewer than {MIN_NEW_TOKENS} for the answer: shorten the question or "
                             "serve.answer.system_prompt")
    return window, max_new


def answer_question(question: str, retriever: Retriever, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, cfg: AnswerConfig, where: str | None = None,
                    model_label: str = "") -> Answer:
    if not getattr(tokenizer, "chat_template", None):
        raise LifecycleError(f"the model's tokenizer ({model_label or 'given'}) has no chat template")
    hits = retriever.search(question, k=cfg.top_k, where=where)
    window, max_new = answer_budget(model, tokenizer, question, cfg.system_prompt, cfg.max_new_tokens)
    ids, used, truncated = fit_prompt(tokenizer, question, hits, cfg.system_prompt, window - max_new)
    if len(used) < len(hits):
        log.info("ask: %d of %d retrieved chunks fit the model's %d-token context", len(used), len(hits), window)
    text = generate(model, tokenizer, ids, max_new)
    return Answer(question=question, text=text, sources=used, retrieved=len(hits), prompt=tokenizer.decode(ids),
                  model=model_label, truncated=truncated)


def resolve_policy(model: str | None, name: str, state_dir: Path,
                   download: bool = True) -> tuple[Path, str, ModelRef | None]:
    """(local folder, label, reference) of the model to answer with: `--model` (a Hugging Face folder, or a
    registry reference NAME/VERSION or NAME@ALIAS), else `name@champion`, else `name@candidate` (the final
    model of the latest pipeline run). The folder is a local copy of the version (unless `download` is off)."""
    from lifecycle.tracking import tracking_uri, use_tracking

    if model and Path(model).expanduser().is_dir():
        return Path(model).expanduser(), str(model), None
    hint = (f"no chat model registered as '{name}@{CHAMPION}' or '{name}@{CANDIDATE}' in {state_dir}: run the "
            f"pipeline through sft (`lifecycle run --until sft --state-dir {state_dir}`) or pass --model with a "
            "Hugging Face folder or a registry reference (NAME/VERSION, NAME@ALIAS)")
    uri = tracking_uri(state_dir)
    if uri.startswith("sqlite:") and not (Path(state_dir) / "mlflow" / "mlflow.db").is_file():
        raise LifecycleError(hint if not model else f"--model {model}: no such folder, and no registry in {state_dir}")
    use_tracking(Path(state_dir))
    if model:
        ref = resolve(model)
        label = f"{ref} ({model})" if str(ref) != model else model
    else:
        for alias in (CHAMPION, CANDIDATE):
            if (ref := get_alias(name, alias)) is not None:
                break
        else:
            raise LifecycleError(hint)
        label = f"{name}@{alias} (version {ref.version})"
    return (local_copy(ref, Path(state_dir) / "models") if download else Path()), label, ref

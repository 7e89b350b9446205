"""Instruction data for SFT: conversations (a user turn, the assistant's answer) with a held-out part
that never reaches training.

- python-docs pairs, derived from the ingested documents of the built-in `python-docs` source:
  "What does json.dumps do?" -> the first paragraph of its docstring, as written (line breaks kept: the
  answer quotes its source). With `context: true` the question comes with the object's document as
  retrieved context, in the prompt layout `lifecycle ask` uses (lifecycle/rag/prompt.py), so the model
  learns to answer from what retrieval finds. Pairs of validation-split documents are held out: neither
  pretraining nor SFT ever saw them.
- the user's files: JSONL or Parquet in TRL's formats, read directly: `{"messages": [...]}`, or
  `{"prompt": ..., "completion": ...}` with strings or message lists. A stable hash of each row decides
  whether it is held out (`val_fraction`).

    train, held_out = build_pairs(cfg.sft.data, documents)   # documents: the ingest output as dicts
    train, dropped = fit_pairs(train, tokenizer, max_length=256)   # contexts cut to fit, else dropped
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lifecycle.config import SftDataConfig
from lifecycle.errors import InputError
from lifecycle.hashing import hash_json
from lifecycle.rag.prompt import rag_messages
from lifecycle.tokenizer import chat_ids

log = logging.getLogger("lifecycle.sft")
Message = dict[str, str]
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Pair:
    """One training conversation; `answer` is the final assistant turn (the reference for ROUGE-L)."""

    messages: tuple[Message, ...]
    source: str  # "python-docs" or the file it came from
    held_out: bool
    question: str = ""
    context: tuple[tuple[str, str], ...] = ()  # (title, text) chunks in the prompt (python-docs pairs)

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]

    @property
    def prompt(self) -> list[Message]:
        return list(self.messages[:-1])

    @property
    def id(self) -> str:
        return hash_json(list(self.messages))


def first_paragraph(text: str) -> str:
    """The docstring's first paragraph of a python-docs document ("header\\n\\ndocstring..."), as written:
    a copy of the context a small model can learn (a reflowed one would not match its source token for token)."""
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return parts[1] if len(parts) > 1 else ""


def python_docs_pairs(docs: list[dict[str, Any]], cfg: SftDataConfig) -> list[Pair]:
    """A pair per documented object, from its first document (long docstrings are split into several)."""
    first: dict[str, dict[str, Any]] = {}
    for doc in docs:
        obj = doc.get("object") or ""
        if obj and (doc["title"] == obj or doc["title"].startswith(f"{obj} (1/")):
            first.setdefault(obj, doc)
    pairs = []
    for obj, doc in sorted(first.items()):
        answer = first_paragraph(doc["text"])
        if not 16 <= len(answer) <= cfg.max_answer_chars:
            continue
        question = cfg.question_template.format(object=obj)
        context = ((obj, doc["text"]),) if cfg.context else ()
        messages = (*rag_messages(question, context, None), {"role": "assistant", "content": answer})
        pairs.append(Pair(messages=messages, source="python-docs", held_out=doc["split"] == "validation",
                          question=question, context=context))
    return pairs


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each record of a JSONL or Parquet file."""
    if not path.is_file():
        raise InputError(f"sft.data.files: {path} does not exist")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InputError(f"{path}: cannot read parquet ({err})") from None
        yield from ((f"{path}[{i}]", row) for i, row in enumerate(rows))
    elif path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    else:
        raise InputError(f"sft.data.files: {path} must be .jsonl or .parquet (TRL prompt/completion or messages)")


def to_messages(row: Any, where: str) -> tuple[Message, ...]:
    """A TRL-format row as a conversation ending with the assistant's answer."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object, got {type(row).__name__}")
    if "messages" in row:
        messages = _messages(row["messages"], where, "messages")
    elif "prompt" in row and "completion" in row:
        prompt = _messages(row["prompt"], where, "prompt", default_role="user")
        completion = _messages(row["completion"], where, "completion", default_role="assistant")
        messages = prompt + completion
    else:
        raise InputError(f"{where}: expected 'messages', or 'prompt' and 'completion' (fields: {sorted(row)[:10]})")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: the conversation must end with an assistant message")
    return messages


def _messages(value: Any, where: str, field: str, default_role: str = "") -> tuple[Message, ...]:
    if isinstance(value, str) and default_role:
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        alternative = " or a string" if default_role else ""
        raise InputError(f"{where}: '{field}' must be a non-empty list of messages{alternative}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: {field}[{i}] must be {{'role': one of {sorted(ROLES)}, 'content': a string}}, "
                             f"got {json.dumps(m, default=str)[:80]}")
        if not m["content"].strip():
            raise InputError(f"{where}: {field}[{i}] has empty content")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def file_pairs(path: Path, val_fraction: float) -> list[Pair]:
    pairs = []
    for where, row in read_rows(path):
        messages = to_messages(row, where)
        held_out = int(hash_json(list(messages))[:8], 16) / 2**32 < val_fraction
        question = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
        pairs.append(Pair(messages=messages, source=str(path), held_out=held_out, question=question))
    if not pairs:
        raise InputError(f"{path}: no instruction pairs found")
    return pairs


def build_pairs(cfg: SftDataConfig, docs: list[dict[str, Any]]) -> tuple[list[Pair], list[Pair]]:
    """(train, held out) from the configured sources; train capped at max_train_pairs by content hash."""
    pairs = python_docs_pairs(docs, cfg) if cfg.python_docs else []
    for name in cfg.files:
        pairs += file_pairs(Path(name).expanduser(), cfg.val_fraction)
    unique = list({p.id: p for p in pairs}.values())
    train = [p for p in unique if not p.held_out]
    held_out = [p for p in unique if p.held_out]
    if cfg.max_train_pairs is not None and len(train) > cfg.max_train_pairs:
        train = sorted(train, key=lambda p: p.id)[:cfg.max_train_pairs]
    if not train:
        raise InputError("sft: no training pairs (enable sft.data.python_docs with a python-docs source, or list "
                         "files in sft.data.files)")
    log.info("sft: %d training pairs, %d held out (%d duplicates dropped)", len(train), len(held_out),
             len(pairs) - len(unique))
    return train, held_out


def conversation_length(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> int:
    return len(chat_ids(tokenizer, messages))


def fit_pairs(pairs: list[Pair], tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[list[Pair], int]:
    """Pairs that fit `max_length` tokens: a context chunk is cut (from its end) to make room; a pair that
    does not fit even without its context is dropped. Returns (fitted, dropped)."""
    fitted, dropped = [], 0
    for pair in pairs:
        over = conversation_length(tokenizer, list(pair.messages)) - max_length
        if over > 0 and pair.context:
            pair = _cut_context(pair, tokenizer, max_length, over)
        if pair is None or conversation_length(tokenizer, list(pair.messages)) > max_length:
            dropped += 1
            continue
        fitted.append(pair)
    if dropped:
        log.info("sft: %d of %d pairs do not fit the model's %d-token context: dropped", dropped, len(pairs),
                 max_length)
    return fitted, dropped


def _cut_context(pair: Pair, tokenizer: PreTrainedTokenizerBase, max_length: int, over: int) -> Pair | None:
    (title, text), = pair.context
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    keep = len(ids) - over
    while keep > 0:
        context = ((title, tokenizer.decode(ids[:keep])),)
        messages = (*rag_messages(pair.question, context, None), pair.messages[-1])
        cut = replace(pair, messages=messages, context=context)
        excess = conversation_length(tokenizer, list(messages)) - max_length
        if excess <= 0:
            return cut
        keep -= excess  # re-encoding the cut text may differ by a token or two
    return None

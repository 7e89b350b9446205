"""Retrieval-augmented answers: retrieve the top-k chunks, put as many as fit the policy model's context
into a chat prompt (system instruction, then context + question as the user turn, through the tokenizer's
chat template), generate greedily until <|im_end|> or EOS, and return the answer with the sources used.

    path, label = resolve_policy(None, cfg.run.registered_model, state_dir)   # --model > @champion > latest
    model, tokenizer = load_policy(path)
    answer = answer_question("How do I parse JSON?", retriever, model, tokenizer, cfg.rag_index.answer)
    answer.text, [s.title for s in answer.sources]
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lifecycle.config import RagAnswerConfig
from lifecycle.errors import LifecycleError
from lifecycle.rag.search import Hit, Retriever, rag_dir

log = logging.getLogger("lifecycle.rag.answer")
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    sources: list[Hit]  # the chunks that went into the prompt, best first
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


def build_messages(question: str, chunks: list[Hit], system_prompt: str) -> list[dict[str, str]]:
    context = "\n\n".join(f"[{i}] {h.title}\n{h.text}" for i, h in enumerate(chunks, 1))
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    # rendered first, then encoded quietly: a prompt longer than the model's context is cut by the caller
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, return_dict=False)
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def context_window(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if value:
            return int(value)
    return int(tokenizer.model_max_length)


def fit_prompt(tokenizer: PreTrainedTokenizerBase, question: str, hits: list[Hit], system_prompt: str,
               budget: int) -> tuple[list[int], list[Hit], bool]:
    """(prompt ids, chunks used, truncated): the best chunks that fit `budget` tokens; the last one is cut
    when not even it fits whole."""
    for n in range(len(hits), 0, -1):
        ids = _encode(tokenizer, build_messages(question, hits[:n], system_prompt))
        if len(ids) <= budget:
            return ids, hits[:n], False
    bare = _encode(tokenizer, build_messages(question, [], system_prompt))
    if len(bare) > budget:
        raise LifecycleError(f"the question and system prompt take {len(bare)} tokens, more than the {budget} the "
                             "model's context leaves after rag_index.answer.max_new_tokens: lower it (--set "
                             "rag_index.answer.max_new_tokens=N), shorten rag_index.answer.system_prompt, or use "
                             "the profile the model was trained with (e.g. --profile quickstart)")
    if hits:
        text_ids = tokenizer(hits[0].text, add_special_tokens=False, verbose=False)["input_ids"]
        full = _encode(tokenizer, build_messages(question, hits[:1], system_prompt))
        keep = len(text_ids) - (len(full) - budget)  # drop the overflow; re-encoding may differ by a token or two
        while keep > 0:
            cut = replace(hits[0], text=tokenizer.decode(text_ids[:keep]))
            ids = _encode(tokenizer, build_messages(question, [cut], system_prompt))
            if len(ids) <= budget:
                return ids, [cut], True
            keep -= max(1, len(ids) - budget)
    return bare, [], False


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int], max_new_tokens: int) -> str:
    """Greedy continuation of `ids`, stopped at the end-of-turn token or EOS."""
    stop = [t for t in (tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id)
            if isinstance(t, int) and t != tokenizer.unk_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else None)
    input_ids = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop or None, pad_token_id=pad)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def answer_question(question: str, retriever: Retriever, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, cfg: RagAnswerConfig, where: str | None = None,
                    model_label: str = "") -> Answer:
    if not getattr(tokenizer, "chat_template", None):
        raise LifecycleError(f"the policy model's tokenizer ({model_label or 'given'}) has no chat template")
    hits = retriever.search(question, k=cfg.top_k, where=where)
    budget = context_window(model, tokenizer) - cfg.max_new_tokens
    ids, used, truncated = fit_prompt(tokenizer, question, hits, cfg.system_prompt, budget)
    if len(used) < len(hits):
        log.info("ask: %d of %d retrieved chunks fit the model's context (%d tokens for the prompt)", len(used),
                 len(hits), budget)
    text = generate(model, tokenizer, ids, cfg.max_new_tokens)
    return Answer(question=question, text=text, sources=used, retrieved=len(hits), prompt=tokenizer.decode(ids),
                  model=model_label, truncated=truncated)


def load_policy(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a Hugging Face folder (the tokenizer may sit in a sub-folder)."""
    model_dir, tok_dir = find_hf_dirs(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


def find_hf_dirs(root: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) under `root`: save_pretrained output or an MLflow transformers model."""
    weights = [p.parent for p in root.rglob("config.json")
               if any(p.parent.glob("*.safetensors")) or any(p.parent.glob("*.bin"))]
    configs = sorted(weights, key=lambda p: len(p.parts))
    tokenizers = sorted((p.parent for p in root.rglob("tokenizer_config.json")), key=lambda p: len(p.parts))
    if not configs or not tokenizers:
        raise LifecycleError(f"{root}: not a Hugging Face causal LM folder (needs config.json with weights and a "
                             f"tokenizer; found {'weights' if configs else 'no weights'}, "
                             f"{'a tokenizer' if tokenizers else 'no tokenizer'})")
    model_dir = configs[0]
    return model_dir, model_dir if model_dir in tokenizers else tokenizers[0]


def resolve_policy(model: str | None, registered_model: str, state_dir: Path) -> tuple[Path, str]:
    """(local folder, label) of the policy: `--model PATH`, else `@champion`, else the newest registered version."""
    if model:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise LifecycleError(f"--model {model}: no such folder (expected a Hugging Face model folder)")
        return path, str(path)
    version, label = _registered_version(registered_model, state_dir)
    dest = rag_dir(state_dir) / "models" / f"{registered_model}-v{version}"
    if not dest.is_dir():
        import mlflow

        tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registered_model}/{version}", dst_path=str(tmp))
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, label


def _registered_version(name: str, state_dir: Path) -> tuple[str, str]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from lifecycle.tracking import latest_model_version, tracking_uri, use_tracking

    hint = (f"no policy model registered as '{name}' in {state_dir}: run the pipeline through pretraining "
            f"(`lifecycle run --until pretrain --state-dir {state_dir}`) or pass --model PATH")
    uri = tracking_uri(state_dir)
    if uri.startswith("sqlite:") and not (Path(state_dir) / "mlflow" / "mlflow.db").is_file():
        raise LifecycleError(hint)
    use_tracking(Path(state_dir))
    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # no @champion yet: fall back to the newest version
        mv = client.get_model_version_by_alias(name, "champion")
        return mv.version, f"{name}@champion (version {mv.version})"
    latest = latest_model_version(client, name)
    if latest is None:
        raise LifecycleError(hint)
    return latest.version, f"{name} version {latest.version} (latest; no @champion yet)"

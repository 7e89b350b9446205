"""tokenize: train a byte-level BPE tokenizer (with chat special tokens and a chat template), or take an open
checkpoint's own (`tokenize.tokenizer: from_model`), measure its compression, and pack the documents into
fixed-length blocks of token ids (documents EOS-separated).

    stats = train_and_pack(cfg.tokenize, docs_dir, Path("out"))   # out/tokenizer, out/blocks, out/stats.json
    stats = train_and_pack(cfg.tokenize, docs_dir, Path("out"), checkpoint=folder)   # the checkpoint's tokenizer
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from functools import partial
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lifecycle.config import TokenizeConfig
from lifecycle.data.ingest import load_documents
from lifecycle.engine import LOCAL, Engine, shards
from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.tokenize")

# <|endoftext|> separates documents in pretraining (bos = eos); <|im_start|>/<|im_end|> frame chat turns.
PAD, ENDOFTEXT, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, ENDOFTEXT, IM_START, IM_END]
# ChatML; {% generation %} marks what the assistant says, so SFT can train on assistant tokens only.
_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_template(default_system: str | None = None) -> str:
    """The ChatML template; with `default_system`, conversations that bring no system message get it
    (how the sft stage gives its model the instruction it was trained with)."""
    if not default_system:
        return _TURNS
    literal = json.dumps(default_system)  # a valid Jinja string literal: JSON escapes are Python's
    return (f"{{% if not messages or messages[0]['role'] != 'system' %}}"
            f"{{{{ '<|im_start|>system\n' + {literal} + '<|im_end|>\n' }}}}{{% endif %}}" + _TURNS)


CHAT_TEMPLATE = chat_template()
GENERATION = "{% generation %}"


def use_system_prompt(tok: PreTrainedTokenizerBase, default_system: str | None) -> None:
    """Give ChatML (ours, with or without a default system message) `default_system` as its default; a
    checkpoint's own template (tokenize.tokenizer: from_model) is left as it is."""
    if not tok.chat_template or (isinstance(tok.chat_template, str) and tok.chat_template.endswith(_TURNS)):
        tok.chat_template = chat_template(default_system)


def training_template(tok: PreTrainedTokenizerBase) -> str:
    """The chat template SFT trains a checkpoint's tokenizer with: its own if it marks the assistant's turn
    ({% generation %}), else TRL's training version of it (known templates: Llama 3, Qwen, Gemma, Phi, ...),
    else ChatML (its <|im_start|>/<|im_end|> added to the tokenizer when missing: the model's embeddings grow)."""
    own = tok.chat_template["default"] if isinstance(tok.chat_template, dict) else tok.chat_template
    if own and GENERATION in own:
        return own
    if own:
        from trl.chat_template_utils import get_training_chat_template

        try:
            return get_training_chat_template(tok) or own
        except ValueError:
            log.warning("tokenize: the checkpoint's chat template has no {%% generation %%} markers and TRL has no "
                        "training version of it: ChatML replaces it (SFT teaches the model that format)")
    missing = [t for t in (IM_START, IM_END) if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
        log.info("tokenize: %s added to the checkpoint's tokenizer for ChatML", ", ".join(missing))
    return CHAT_TEMPLATE


def model_tokenizer(folder: Path, context_length: int | None,
                    remote_code: bool = False) -> tuple[PreTrainedTokenizerFast, int]:
    """(the tokenizer of the checkpoint in `folder`, ready for this pipeline; the block length): its padding is
    its EOS when it has none, its chat template `training_template`'s; the blocks are `context_length` tokens,
    at most the model's window (null: the window)."""
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=remote_code)
    if not tok.is_fast:
        raise LifecycleError(f"tokenize: {folder} has no fast (Rust) tokenizer, which packing needs")
    if tok.eos_token_id is None:
        raise LifecycleError(f"tokenize: {folder}'s tokenizer has no end-of-sequence token, which separates "
                             "documents in pretraining and ends answers")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = training_template(tok)
    window = context_limit(json.loads((folder / "config.json").read_text()))
    size = min(context_length or window, window)
    if context_length and context_length > window:
        log.warning("tokenize: context_length %d is more than the model's window: blocks of %d", context_length,
                    window)
    tok.model_max_length = size
    return tok, size


def context_limit(config: dict[str, Any]) -> int:
    """The positions a model's config.json says it was trained with (its text model's, for a multimodal one)."""
    for settings in (config.get("text_config") or {}, config):
        for name in ("max_position_embeddings", "n_positions"):
            if value := settings.get(name):
                return int(value)
    raise LifecycleError(f"tokenize: the model's config.json ({config.get('model_type', 'no model_type')}) gives no "
                         "context length; set tokenize.context_length")


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
             add_generation_prompt: bool = False) -> list[int]:
    """The conversation rendered by the tokenizer's chat template, then encoded quietly (a text longer
    than the model's context is expected here: callers measure it to cut it)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Where generation ends: the end of the assistant's turn, or EOS."""
    return [t for t in (tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id)
            if isinstance(t, int) and t != tokenizer.unk_token_id]


def _text_sample(ds: datasets.Dataset, max_chars: int, batch: int = 1000) -> Iterator[list[str]]:
    used = 0
    for start in range(0, len(ds), batch):
        texts = ds[start:start + batch]["text"]
        yield texts
        used += sum(map(len, texts))
        if used >= max_chars:
            return


def train_tokenizer(cfg: TokenizeConfig, train: datasets.Dataset) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_text_sample(train, cfg.train_max_chars), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                 model_max_length=cfg.context_length,
                                 additional_special_tokens=[IM_START, IM_END])
    hf.chat_template = CHAT_TEMPLATE
    return hf


def bytes_per_token(tok: PreTrainedTokenizerFast, texts: list[str]) -> tuple[float, int, int]:
    """(UTF-8 bytes per token, bytes, tokens) over `texts`: the tokenizer's compression."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False))
    return (n_bytes / n_tokens if n_tokens else 0.0), n_bytes, n_tokens


def pack_split(texts: Sequence[str], tok_dir: Path, cfg: TokenizeConfig, size: int, eos_id: int, engine: Engine,
               name: str) -> datasets.Dataset:
    """Tokenize with EOS after each document (in shards of `tokenize.batch_size` documents, on `engine`), then
    cut the whole stream into blocks of `size`; the last, partial block is dropped."""
    encode = partial(encode_documents, tok_dir=str(tok_dir), eos_id=eos_id)
    parts = engine.map(encode, shards(texts, cfg.batch_size), f"tokenize-{name}")
    stream = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
    usable = len(stream) // size * size
    offsets = pa.array(np.arange(0, usable + 1, size, dtype=np.int32))
    blocks = pa.ListArray.from_arrays(offsets, pa.array(stream[:usable]))
    return datasets.Dataset(InMemoryTable(pa.table({"input_ids": blocks})))


def encode_documents(texts: Sequence[str], tok_dir: str, eos_id: int) -> np.ndarray:
    """The token ids of `texts`, each followed by `eos_id`, as one int32 stream."""
    encoded = _cached_tokenizer(tok_dir).backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return np.fromiter(chain.from_iterable(e.ids + [eos_id] for e in encoded), dtype=np.int32)


_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


def _cached_tokenizer(path: str) -> PreTrainedTokenizerFast:
    if path not in _TOKENIZERS:  # once per worker process, not once per batch
        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def train_and_pack(cfg: TokenizeConfig, docs_dir: Path, out_dir: Path, engine: Engine = LOCAL,
                   checkpoint: Path | None = None, remote_code: bool = False) -> dict[str, float]:
    """Train the tokenizer (or take `checkpoint`'s, `model_tokenizer`) and pack both splits; the stats."""
    docs = load_documents(docs_dir)
    if not len(docs["validation"]):
        raise LifecycleError("tokenize: the validation split is empty; set ingest.val_fraction above 0")
    if not len(docs["train"]):
        raise LifecycleError("tokenize: the train split is empty; add documents or lower ingest.val_fraction")
    if checkpoint is not None:
        tok, size = model_tokenizer(checkpoint, cfg.context_length, remote_code)
    else:
        tok, size = train_tokenizer(cfg, docs["train"]), int(cfg.context_length or 0)
    if checkpoint is None and len(tok) < cfg.vocab_size:  # the corpus ran out of pairs to merge
        chars = sum(map(len, docs["train"]["text"]))
        capped = f", tokenize.train_max_chars={cfg.train_max_chars} of them used" if chars > cfg.train_max_chars else ""
        raise LifecycleError(
            f"tokenize: the train split ({len(docs['train'])} documents, {chars} characters{capped}) is too small for "
            f"tokenize.vocab_size={cfg.vocab_size}: only {len(tok)} tokens could be learned (pairs seen at least "
            f"tokenize.min_frequency={cfg.min_frequency} times); add documents or set tokenize.vocab_size to at "
            f"most {len(tok)}")
    tok_dir = out_dir / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    val_texts = list(docs["validation"]["text"])
    bpt, val_bytes, val_tokens = bytes_per_token(tok, val_texts)
    eos = tok.eos_token_id
    blocks = datasets.DatasetDict({split: pack_split(list(docs[split]["text"]), tok_dir, cfg, size, eos, engine,
                                                     split) for split in ("train", "validation")})
    if not len(blocks["train"]):
        raise LifecycleError(f"tokenize: the train split has fewer than {size} tokens (the block length, "
                             f"tokenize.context_length={cfg.context_length}); add data or lower the context length")
    blocks.save_to_disk(str(out_dir / "blocks"))
    n_train, n_val = len(blocks["train"]), len(blocks["validation"])
    stats: dict[str, float] = {
        "vocab_size": len(tok),
        "bytes_per_token": bpt,
        "validation_bytes": val_bytes,
        "validation_tokens": val_tokens,
        "train_blocks": n_train,
        "validation_blocks": n_val,
        "train_tokens": n_train * size,
        "context_length": size,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("tokenize: vocab %d, %.2f bytes/token on validation, %d train / %d validation blocks of %d",
             len(tok), bpt, n_train, n_val, size)
    return stats


def load_blocks(path: Path) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(path / "blocks"))

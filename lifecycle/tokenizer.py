"""tokenize: train a byte-level BPE tokenizer (with chat special tokens and a chat template), measure its
compression, and pack the documents into fixed-length blocks of token ids (documents EOS-separated).

    stats = train_and_pack(cfg.tokenize, docs_dir, Path("out"))   # out/tokenizer, out/blocks, out/stats.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
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


def pack_split(texts: Sequence[str], tok_dir: Path, cfg: TokenizeConfig, eos_id: int, engine: Engine,
               name: str) -> datasets.Dataset:
    """Tokenize with EOS after each document (in shards of `tokenize.batch_size` documents, on `engine`), then
    cut the whole stream into `context_length` blocks; the last, partial block is dropped."""
    encode = partial(encode_documents, tok_dir=str(tok_dir), eos_id=eos_id)
    parts = engine.map(encode, shards(texts, cfg.batch_size), f"tokenize-{name}")
    stream = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
    size = cfg.context_length
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


def train_and_pack(cfg: TokenizeConfig, docs_dir: Path, out_dir: Path, engine: Engine = LOCAL) -> dict[str, float]:
    docs = load_documents(docs_dir)
    if not len(docs["validation"]):
        raise LifecycleError("tokenize: the validation split is empty; set ingest.val_fraction above 0")
    if not len(docs["train"]):
        raise LifecycleError("tokenize: the train split is empty; add documents or lower ingest.val_fraction")
    tok = train_tokenizer(cfg, docs["train"])
    if len(tok) < cfg.vocab_size:  # the corpus ran out of pairs to merge: a smaller vocabulary than configured
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
    blocks = datasets.DatasetDict({split: pack_split(list(docs[split]["text"]), tok_dir, cfg, eos, engine, split)
                                   for split in ("train", "validation")})
    if not len(blocks["train"]):
        raise LifecycleError(f"tokenize: the train split has fewer than tokenize.context_length={cfg.context_length} "
                             "tokens; add data or lower the context length")
    blocks.save_to_disk(str(out_dir / "blocks"))
    n_train, n_val = len(blocks["train"]), len(blocks["validation"])
    stats: dict[str, float] = {
        "vocab_size": len(tok),
        "bytes_per_token": bpt,
        "validation_bytes": val_bytes,
        "validation_tokens": val_tokens,
        "train_blocks": n_train,
        "validation_blocks": n_val,
        "train_tokens": n_train * cfg.context_length,
        "context_length": cfg.context_length,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("tokenize: vocab %d, %.2f bytes/token on validation, %d train / %d validation blocks of %d",
             len(tok), bpt, n_train, n_val, cfg.context_length)
    return stats


def load_blocks(path: Path) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(path / "blocks"))

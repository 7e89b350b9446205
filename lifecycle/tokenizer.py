"""tokenize: train a byte-level BPE tokenizer (with chat special tokens and a chat template), measure its
compression, and pack the documents into fixed-length blocks of token ids (documents EOS-separated).

    stats = train_and_pack(cfg.tokenize, docs_dir, Path("out"))   # out/tokenizer, out/blocks, out/stats.json
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lifecycle.config import TokenizeConfig
from lifecycle.data.ingest import load_documents
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


def pack_split(ds: datasets.Dataset, tok_dir: Path, cfg: TokenizeConfig, eos_id: int,
               scratch: Path) -> datasets.Dataset:
    """Tokenize with EOS after each document, then cut the stream into `context_length` blocks. The map
    caches go to `scratch` (this stage's own folder), never beside the input's files."""
    size = cfg.context_length
    scratch.mkdir(parents=True, exist_ok=True)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        tok = _cached_tokenizer(str(tok_dir))
        encoded = tok.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        return {"ids": [e.ids + [eos_id] for e in encoded]}

    def group(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        stream = [t for seq in batch["ids"] for t in seq]
        usable = len(stream) // size * size
        return {"input_ids": [stream[i:i + size] for i in range(0, usable, size)]}

    num_proc = cfg.num_proc if len(ds) >= 2 * cfg.batch_size else None
    encoded = ds.map(encode, batched=True, batch_size=cfg.batch_size, num_proc=num_proc,
                     remove_columns=ds.column_names, desc="tokenize", cache_file_name=str(scratch / "encode.arrow"))
    return encoded.map(group, batched=True, batch_size=cfg.batch_size, num_proc=num_proc, remove_columns=["ids"],
                       desc=f"pack into {size}-token blocks", cache_file_name=str(scratch / "pack.arrow"))


_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


def _cached_tokenizer(path: str) -> PreTrainedTokenizerFast:
    if path not in _TOKENIZERS:  # once per worker process, not once per batch
        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def train_and_pack(cfg: TokenizeConfig, docs_dir: Path, out_dir: Path) -> dict[str, float]:
    docs = load_documents(docs_dir)
    if not len(docs["validation"]):
        raise LifecycleError("tokenize: the validation split is empty; set ingest.val_fraction above 0")
    tok = train_tokenizer(cfg, docs["train"])
    tok_dir = out_dir / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    val_texts = list(docs["validation"]["text"])
    bpt, val_bytes, val_tokens = bytes_per_token(tok, val_texts)
    scratch = out_dir / ".map-cache"
    blocks = datasets.DatasetDict({split: pack_split(docs[split], tok_dir, cfg, tok.eos_token_id, scratch / split)
                                   for split in ("train", "validation")})
    if not len(blocks["train"]):
        raise LifecycleError(f"tokenize: the train split has fewer than tokenize.context_length={cfg.context_length} "
                             "tokens; add data or lower the context length")
    blocks.save_to_disk(str(out_dir / "blocks"))
    n_train, n_val = len(blocks["train"]), len(blocks["validation"])
    del blocks  # release the caches' memory maps before removing them
    shutil.rmtree(scratch)
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

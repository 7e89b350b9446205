"""tokenize: the BPE tokenizer (special tokens, chat template, compression) and packed blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lifecycle.config import load_config
from lifecycle.data.ingest import ingest_documents
from lifecycle.tokenizer import load_blocks, train_and_pack
from tests.unit.test_ingest import make_cfg


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tok")
    conf = Path(__file__).resolve().parents[2] / "conf"
    ingest_documents(make_cfg(conf, [{"name": "py", "kind": "python-docs", "include": ["json", "textwrap"]}]),
                     root)
    cfg = load_config(conf, overrides=["tokenize.vocab_size=512", "tokenize.context_length=64"]).tokenize
    return root, train_and_pack(cfg, root, root)


def test_tokenizer_has_special_tokens_and_chat_template(packed: tuple[Path, dict]) -> None:
    tok = AutoTokenizer.from_pretrained(packed[0] / "tokenizer")
    assert len(tok) == 512
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.extra_special_tokens)
    chat = tok.apply_chat_template([{"role": "user", "content": "What does json.dumps do?"},
                                    {"role": "assistant", "content": "It serializes."}], tokenize=False)
    assert chat.startswith("<|im_start|>user\n") and chat.endswith("It serializes.<|im_end|>\n")
    text = "Serialize obj to a JSON formatted str."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_compression_and_counts_are_reported(packed: tuple[Path, dict]) -> None:
    stats = packed[1]
    assert stats["bytes_per_token"] > 1.5  # BPE merges beat raw bytes
    assert json.loads((packed[0] / "stats.json").read_text()) == stats


def test_blocks_have_fixed_length_and_eos_between_documents(packed: tuple[Path, dict]) -> None:
    blocks = load_blocks(packed[0])
    tok = AutoTokenizer.from_pretrained(packed[0] / "tokenizer")
    train = blocks["train"]["input_ids"]
    assert len(train) == packed[1]["train_blocks"] > 10
    assert all(len(b) == 64 for b in train)
    assert sum(b.count(tok.eos_token_id) for b in train) >= 10
    assert len(blocks["validation"]) == packed[1]["validation_blocks"] > 0

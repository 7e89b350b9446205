"""Tiny open checkpoints, as a user brings them (`pretrain.init`): a GPT-2-shaped causal LM with a byte-level BPE
tokenizer of its own that has an end-of-text token and nothing else (no padding, no chat template, no ChatML
tokens), saved with save_pretrained; and the same laid out as a Hugging Face hub cache entry, for offline runs.

    folder = save_tiny_checkpoint(tmp_path / "ckpt")
    commit = cache_as_hub_model(folder, tmp_path / "hub", "tiny-org/tiny-gpt")   # HF_HUB_CACHE=tmp_path/"hub"
"""

from __future__ import annotations

import inspect
import json
import shutil
import string
import textwrap
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOT = "<|endoftext|>"


def save_tiny_checkpoint(folder: Path, positions: int = 64, seed: int = 0) -> Path:
    texts = [inspect.getdoc(module) or "" for module in (json, string, textwrap, shutil)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=[EOT], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(hf), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=hf.eos_token_id, eos_token_id=hf.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    hf.save_pretrained(str(folder))
    return folder


def cache_as_hub_model(folder: Path, cache: Path, repo_id: str, commit: str = "0123456789abcdef" * 2 + "0" * 8) -> str:
    """`folder` as the snapshot `commit` of hub model `repo_id` in the cache at `cache` (refs/main points at it),
    as `huggingface_hub.snapshot_download` leaves it; the commit."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    return commit

"""Tiny, hermetic pretraining inputs for the tests: a tokenize-stage output (tokenizer/, blocks/,
stats.json) built in-process from a few stdlib docstrings, and a tiny pretrain config from conf/."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import datasets
import yaml

from lifecycle.config import PretrainConfig, TokenizeConfig, deep_merge
from lifecycle.engine import LOCAL
from lifecycle.tokenizer import bytes_per_token, pack_split, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("json", "textwrap", "string", "csv", "shlex", "fnmatch", "argparse", "pathlib")

# a model of a few hundred thousand parameters, fp32 on one CPU thread, bit-exact
TINY_MODEL = {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "d_ff": 172}
TINY = {"max_steps": 20, "batch_size": 8, "micro_batch_size": 8, "eval_every": 0, "eval_batches": None,
        "log_every": 5, "checkpoint_every": 0, "device": "cpu", "dtype": "fp32", "compile": False,
        "num_threads": 1, "deterministic": True, "sample": {"prompts": ["def "], "max_new_tokens": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 2}}


def _docstrings() -> list[str]:
    import importlib

    texts = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc and len(doc) > 40:
                texts.append(doc)
    return texts


def make_tokenized(out: Path, vocab_size: int = 320, context_length: int = 33) -> Path:
    """Write a tokenize-stage output to `out` and return it."""
    texts = _docstrings()
    splits = {"train": [t for i, t in enumerate(texts) if i % 10], "validation": texts[::10]}
    cfg = TokenizeConfig(vocab_size=vocab_size, min_frequency=2, train_max_chars=10**6,
                         context_length=context_length, batch_size=1000)
    ds = {k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}
    tok = train_tokenizer(cfg, ds["train"])
    tok.save_pretrained(str(out / "tokenizer"))
    _, n_bytes, n_tokens = bytes_per_token(tok, splits["validation"])
    blocks = datasets.DatasetDict({k: pack_split(v, out / "tokenizer", cfg, context_length, tok.eos_token_id, LOCAL, k)
                                  for k, v in splits.items()})
    blocks.save_to_disk(str(out / "blocks"))
    (out / "stats.json").write_text(json.dumps({"validation_bytes": n_bytes, "validation_tokens": n_tokens}))
    return out


def tiny_pretrain_config(**changes: Any) -> PretrainConfig:
    """conf/pretrain.yaml with the tiny settings above, then `changes` (nested dicts merge)."""
    data = yaml.safe_load((ROOT / "conf" / "pretrain.yaml").read_text())
    for overlay in ({"model": TINY_MODEL}, TINY, changes):
        deep_merge(data, overlay)
    return PretrainConfig.model_validate(data)

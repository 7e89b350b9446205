"""SFT with and without LoRA on the quickstart's model shape (CPU): trainable parameters and optimizer step
time of the SFTTrainer the sft stage builds, the two variants taking turns on the same batches (median over the
steps after the first, and the median of their per-batch ratio). The base model is untrained (a fresh one of
`pretrain.model`, with a tokenizer trained on the documents): step time does not depend on what the weights
hold. Prints one JSON object per variant.

    python bench/lora_sft.py --profile quickstart --steps 20 --peft '{r: 8, lora_alpha: 16, target_modules: all-linear}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch

from lifecycle.align.sft import build_trainer, prepare
from lifecycle.config import SourceConfig, TokenizeConfig, load_config
from lifecycle.data.sources import read_python_docs
from lifecycle.lora import trainable_share
from lifecycle.model import build_model
from lifecycle.tokenizer import train_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"
MODULES = ["json", "csv", "textwrap", "string", "shlex", "pathlib", "argparse", "logging", "collections"]


def documents() -> list[dict]:
    source = SourceConfig(name="stdlib", kind="python-docs", include=MODULES)
    return [{"id": str(i), "text": r["text"], "title": r["title"], "object": r["object"], "source": "stdlib",
             "path": r["path"], "split": "validation" if i % 10 == 0 else "train"}
            for i, r in enumerate(read_python_docs(source))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quickstart")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peft", default="{r: 8, lora_alpha: 16, target_modules: all-linear}")
    args = parser.parse_args()
    docs = documents()
    base_cfg = load_config(CONF, profile=args.profile)
    window = base_cfg.tokenize.context_length
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        tok = train_tokenizer(TokenizeConfig(vocab_size=base_cfg.tokenize.vocab_size, min_frequency=2,
                                             train_max_chars=10**7, context_length=window, batch_size=100),
                              datasets.Dataset.from_dict({"text": [d["text"] for d in docs]}))
        torch.manual_seed(0)
        build_model(base_cfg.pretrain.model, len(tok), window, tok.eos_token_id, tok.pad_token_id).save_pretrained(
            str(base))
        tok.save_pretrained(str(base))
        trainers = {}
        for peft in ("null", args.peft):
            cfg = load_config(CONF, profile=args.profile, overrides=[
                "sft.device=cpu", f"sft.trainer.max_steps={args.steps}", f"sft.peft={peft}"])
            model, tokenizer, train, held_out = prepare(cfg, base, docs)
            trainer = build_trainer(cfg, model, tokenizer, train, held_out, Path(tmp) / f"ckpt-{len(peft)}")
            trainer.create_optimizer_and_scheduler(num_training_steps=args.steps)
            trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
            trainers[peft] = trainer
        batches = list(itertools.islice(trainers["null"].get_train_dataloader(), args.steps))
        times: dict[str, list[float]] = {peft: [] for peft in trainers}
        for batch in batches:  # the variants take turns on the same batch: a busy machine slows both alike
            for peft, trainer in trainers.items():
                started = time.perf_counter()
                step(trainer, batch)
                times[peft].append(time.perf_counter() - started)
        ratios = [lora / full for full, lora in zip(times["null"][1:], times[args.peft][1:], strict=True)]
        for peft, trainer in trainers.items():
            print(json.dumps({"peft": None if peft == "null" else peft, "profile": args.profile,
                              "batch": len(batches[0]["input_ids"]), "context": window,
                              "threads": torch.get_num_threads(), **trainable_share(trainer.model),
                              "step_s_median": statistics.median(times[peft][1:]), "steps": len(batches),
                              **({"lora_over_full_median": statistics.median(ratios)} if peft != "null" else {})}),
                  flush=True)


def step(trainer: Any, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step as Trainer takes it: forward, backward, clip, update."""
    trainer.model.train()
    trainer.training_step(trainer.model, batch)
    torch.nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], 1.0)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad()


if __name__ == "__main__":
    main()

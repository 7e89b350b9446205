"""A reward model of its own (`rlhf.reward.model: all-MiniLM-L6-v2`, installed offline): trained on preference
pairs whose chosen answer is the one the prompt's context supports (the answers alone say nothing: every word
is chosen and rejected alike), it judges held-out prompts far above chance, where its fresh head is at chance;
it reads [CLS] answer [SEP] context [SEP], cut to `rlhf.reward.max_length`; eval-reward and the evaluate
stage's win rates load it from its folder; RLOO and the gold monitor score the policy's completions through
it; a value naming nothing loadable is a ConfigError naming the key and the value."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from transformers import set_seed

from lifecycle.align.gold import GoldPrompt, GoldSet
from lifecycle.align.pairs import split_pairs
from lifecycle.align.policy import train_policy
from lifecycle.align.reward import train_reward
from lifecycle.align.reward_model import RewardModel, load_encoder, start_reward_model
from lifecycle.cli import main
from lifecycle.config import load_config
from lifecycle.errors import ConfigError
from lifecycle.evaluate.metrics import reward_margins, win_share
from lifecycle.rag.prompt import rag_messages
from tests.unit.test_policy import PROMPTS, sft_dir, tiny  # noqa: F401  (sft_dir: the tiny policy fixture)

CONF = Path(__file__).resolve().parents[2] / "conf"
NAMES = ["alpha", "bravo", "delta", "gamma", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
WORDS = ["garden", "pencil", "window", "silver", "market", "rocket", "button", "candle", "forest", "yellow",
         "planet", "bridge", "doctor", "finger", "jacket", "kettle"]
ENCODER = ["rlhf.device=cpu", "rlhf.reward.model=all-MiniLM-L6-v2", "rlhf.reward.max_length=48",
           "rlhf.reward.trainer.learning_rate=1e-4", "rlhf.reward.trainer.max_steps=8",
           "rlhf.reward.trainer.per_device_train_batch_size=8", "rlhf.reward.trainer.logging_steps=4",
           "rlhf.reward.trainer.save_steps=1000"]


def reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def context_rows(n: int, seed: int = 0) -> list[dict]:
    """Each prompt's retrieved chunk says what a function returns; the chosen answer says the same, the rejected
    one names another word (drawn from the same list: only the context tells them apart)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, (good, bad) = f"{rng.choice(NAMES)}.{rng.choice(NAMES)}{i}", rng.sample(WORDS, 2)
        prompt = rag_messages(f"What does {name} return?", [(name, f"{name}(x)\nReturn the {good} of x.")], None)
        rows.append({"prompt": prompt, "chosen": reply(f"It returns the {good}."),
                     "rejected": reply(f"It returns the {bad}."), "source": "simulated", "item_id": f"ctx-{i}"})
    return rows


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(folder of the trained encoder reward model, its metrics)."""
    out = tmp_path_factory.mktemp("encoder")
    result = train_reward(load_config(CONF, overrides=ENCODER), Path("/no/sft/model"), context_rows(160), out,
                          out / "ckpt")
    assert result.kind == "pair" and len(result.margins) == result.metrics["held_out_pairs"]
    return out / "reward_model", result.metrics


def test_the_encoder_learns_to_judge_answers_by_their_context(encoder: tuple[Path, dict]) -> None:
    folder, metrics = encoder
    assert metrics["train_pairs"] + metrics["held_out_pairs"] == 160 and metrics["dropped_pairs"] == 0
    assert metrics["steps"] == 8 and metrics["accuracy"] > 0.8, metrics
    cfg = load_config(CONF, overrides=ENCODER)
    set_seed(cfg.run.seed)  # the fresh head the training started from, on the same held-out pairs
    fresh = start_reward_model(cfg, Path("/no/sft/model"))
    held = split_pairs(context_rows(160), cfg.rlhf.held_out_fraction)[1]
    fresh_accuracy = sum(m > 0 for m in fresh.margins(held)) / len(held)
    trained = RewardModel.load(folder)
    assert sum(m > 0 for m in trained.margins(held)) / len(held) > fresh_accuracy + 0.2
    assert trained.kind == "pair" and trained.max_length == 48 and not trained.tokenizer.chat_template
    assert type(trained.model).__name__ == "BertForSequenceClassification" and trained.model.config.num_labels == 1


def test_it_reads_the_answer_then_the_context_with_special_tokens_cut_to_max_length(
        encoder: tuple[Path, dict]) -> None:
    reward = RewardModel.load(encoder[0])
    tok = reward.tokenizer
    long = rag_messages("What does f return?", [("f", "f(x)\n" + "filler words here " * 40)], None)
    ids = reward.ids(long, reply("It returns the garden."))
    answer = tok("It returns the garden.", add_special_tokens=False)["input_ids"]
    assert len(ids) == 48 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[1:1 + len(answer)] == answer and ids[1 + len(answer)] == tok.sep_token_id  # the answer whole
    assert tok.decode(ids[2 + len(answer):4 + len(answer)]) == "context :"  # then the context, cut at its end
    assert reward.fits({"prompt": long, "chosen": reply("a"), "rejected": reply("b")})  # cut, never dropped


def test_eval_reward_and_evaluate_load_it(encoder: tuple[Path, dict], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = encoder[0]
    rows = context_rows(30, seed=5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    assert main(["eval-reward", "--pairs", str(pairs), "--model", str(folder), "--conf", str(CONF),
                 "--state-dir", str(tmp_path / "state")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "pair" and report["pairs"] == 30 and report["dropped_pairs"] == 0
    assert report["accuracy"] > 0.8 and report["length_baseline"] == 0.5  # same lengths: ties, half each
    prompts = [r["prompt"] for r in rows]
    good = [r["chosen"][0]["content"] for r in rows]
    bad = [r["rejected"][0]["content"] for r in rows]
    assert win_share(reward_margins(folder, prompts, good, bad)) > 0.8  # the evaluate stage's win rate
    assert win_share(reward_margins(folder, prompts, bad, good)) < 0.2


def test_rloo_and_the_gold_monitor_score_completions_through_it(encoder: tuple[Path, dict], sft_dir: Path,
                                                                tmp_path: Path) -> None:
    seen: dict[str, list[float]] = {}

    def hook(metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            seen.setdefault(k, []).append(v)

    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=2) + ["rlhf.gold.every=1", "rlhf.gold.max_new_tokens=6"])
    gold = GoldSet([GoldPrompt(p, "It will load the json and return it.") for p in PROMPTS[:4]], "")
    result = train_policy(cfg, sft_dir, encoder[0].parent, PROMPTS, tmp_path / "out", tmp_path / "ckpt", hook,
                          gold=gold)
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["reward_last"])
    rewards = seen["rlhf/policy/train/rewards/reward_model/mean"]
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards)
    assert len(seen["rlhf/gold/proxy"]) == 3 and all(math.isfinite(p) for p in seen["rlhf/gold/proxy"])


def test_a_value_naming_nothing_loadable_is_refused(tmp_path: Path) -> None:
    for value, expected in ((str(tmp_path / "missing"), "no such folder"),
                            ("no-org/no-such-model", "not a hub id in the local Hugging Face cache")):
        cfg = load_config(CONF, overrides=ENCODER + [f"rlhf.reward.model={value}"])
        with pytest.raises(ConfigError, match=rf'rlhf\.reward\.model = "{value}": .*{expected}'):
            load_encoder(cfg)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("not a model")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    for folder, expected in (("empty", "not a Hugging Face"), ("pickled", "pickle")):
        cfg = load_config(CONF, overrides=ENCODER + [f"rlhf.reward.model={tmp_path / folder}"])
        with pytest.raises(ConfigError, match=rf"rlhf\.reward\.model = .*{folder}.*cannot load .*{expected}"):
            load_encoder(cfg)

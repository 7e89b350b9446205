"""The reward model on a tiny in-process "SFT" model: it learns a content preference that length cannot
explain (answers with a marker word win) and beats the longer-answer-wins baseline; on data where length is
all there is, it is flagged; pairs over the context are dropped and counted; it scores pairs exactly as
TRL's trainer feeds them; a crashed run resumes from its checkpoint; a saved model is evaluated from disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch

from lifecycle.align.reward import evaluate_reward, length_baseline, reward_args, train_reward
from lifecycle.align.reward_model import RewardModel
from lifecycle.config import TokenizeConfig, load_config
from lifecycle.model import build_model
from lifecycle.tokenizer import chat_template, train_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"
MARKER = "banana"
FILLER = ["garden", "pencil", "window", "silver", "market", "rocket", "button", "candle", "forest", "yellow",
          "planet", "bridge", "doctor", "finger", "hollow", "jacket", "kettle", "ladder", "mirror", "napkin",
          "orange", "puzzle", "rabbit", "saddle", "tomato", "velvet", "walnut", "zipper", "anchor", "bottle"]
TOPICS = ["cats", "trains", "rain", "music", "bread", "boats", "clocks", "stars"]
TINY = ["rlhf.device=cpu", "rlhf.reward.trainer.per_device_train_batch_size=16",
        "rlhf.reward.trainer.learning_rate=2e-3", "rlhf.reward.trainer.warmup_steps=5",
        "rlhf.reward.trainer.logging_steps=10", "rlhf.reward.trainer.save_steps=1000",
        "pretrain.model.n_layer=2", "pretrain.model.n_head=4", "pretrain.model.n_kv_head=2",
        "pretrain.model.d_model=64", "pretrain.model.d_ff=172"]
CONTEXT = 64


def message(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def marker_rows(n: int, seed: int = 0, long_rows: int = 0) -> list[dict]:
    """The answer with the marker word wins; both answers' lengths come from the same distribution. The
    last `long_rows` have an answer too long for the model's context."""
    rng = random.Random(seed)

    def words(k: int) -> list[str]:
        return rng.choices(FILLER, k=k)

    rows = []
    for i in range(n):
        good = words(rng.randint(3, 9))
        good.insert(rng.randrange(len(good) + 1), MARKER)
        bad = words(60 if i >= n - long_rows else rng.randint(4, 10))
        rows.append({"prompt": message("user", f"Tell me about {rng.choice(TOPICS)}."),
                     "chosen": message("assistant", " ".join(good)), "rejected": message("assistant", " ".join(bad)),
                     "source": "human" if i % 2 else "simulated", "item_id": f"item-{i}"})
    return rows


def length_rows(n: int, seed: int = 1) -> list[dict]:
    """The longer answer always wins; the words are random."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        short = rng.randint(2, 5)
        long = short + rng.randint(1, 4)
        rows.append({"prompt": message("user", f"Tell me about {rng.choice(TOPICS)}."),
                     "chosen": message("assistant", " ".join(rng.choices(FILLER, k=long))),
                     "rejected": message("assistant", " ".join(rng.choices(FILLER, k=short))),
                     "source": "import", "item_id": f"len-{i}"})
    return rows


def make_sft_dir(out: Path) -> Path:
    """A tiny untrained Llama (context 64) and a BPE tokenizer over the words above, with a chat template
    that has a default system prompt, as the sft stage saves it."""
    texts = [f"Tell me about {t}. " + " ".join(FILLER + [MARKER]) for t in TOPICS] * 4
    tok = train_tokenizer(TokenizeConfig(vocab_size=600, min_frequency=1, train_max_chars=10**6,
                                         context_length=CONTEXT, batch_size=100),
                          datasets.Dataset.from_dict({"text": texts}))
    tok.chat_template = chat_template("Be brief.")
    torch.manual_seed(0)
    model = build_model(load_config(CONF, overrides=TINY).pretrain.model, len(tok), CONTEXT, tok.eos_token_id,
                        tok.pad_token_id)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sft_dir(tmp_path_factory.mktemp("sft"))


@pytest.fixture(scope="module")
def trained(sft_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    """(out folder, metrics, rows) of a reward model trained on the marker preference."""
    out = tmp_path_factory.mktemp("reward")
    rows = marker_rows(400, long_rows=6)
    cfg = load_config(CONF, overrides=TINY + ["rlhf.reward.trainer.max_steps=40"])
    result = train_reward(cfg, sft_dir, rows, out, out / "ckpt")
    assert result.flagged is False and result.margins and len(result.margins) == result.metrics["held_out_pairs"]
    return out, result.metrics, rows


def test_reward_model_learns_content_not_length(trained: tuple[Path, dict, list[dict]]) -> None:
    out, metrics, rows = trained
    assert metrics["dropped_pairs"] == 6  # the long ones, counted instead of silently filtered by TRL
    assert metrics["train_pairs"] + metrics["held_out_pairs"] + metrics["dropped_pairs"] == len(rows)
    assert metrics["accuracy"] > 0.9, metrics
    assert 0.3 < metrics["length_baseline"] < 0.7  # length cannot explain the preference here
    assert metrics["beats_length_baseline"] == 1.0
    assert metrics["accuracy/human"] > 0.8 and metrics["accuracy/simulated"] > 0.8
    assert metrics["margin_p10"] <= metrics["margin_p50"] <= metrics["margin_p90"] and metrics["margin_mean"] > 0
    assert metrics["resumed"] == 0 and metrics["steps"] == 40
    assert json.loads((out / "reward_metrics.json").read_text()) == pytest.approx(metrics)


def test_scores_match_what_the_trainer_feeds_the_model(trained: tuple[Path, dict, list[dict]], tmp_path: Path) -> None:
    """RewardModel.margins tokenises like RewardTrainer: same rewards as the trainer's own collated batch; and
    batching (padding) does not change a score."""
    import trl

    out, _, rows = trained
    reward = RewardModel.load(out / "reward_model")
    model, tok = reward.model, reward.tokenizer
    assert reward.kind == "chat"
    rows = rows[:6]
    cfg = load_config(CONF, overrides=TINY)
    trainer = trl.RewardTrainer(model=model, args=reward_args(cfg, tmp_path, CONTEXT), processing_class=tok,
                                train_dataset=datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen",
                                                                                             "rejected")}
                                                                          for r in rows]))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.inference_mode():
        chosen, rejected = model(**batch).logits[:, 0].chunk(2)
    expected = (chosen - rejected).tolist()
    assert reward.margins(rows, batch_size=6) == pytest.approx(expected, abs=1e-5)
    assert reward.margins(rows, batch_size=1) == pytest.approx(expected, abs=1e-4)


def test_length_only_preference_is_flagged(sft_dir: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    rows = length_rows(120)
    assert length_baseline(rows) == 1.0
    cfg = load_config(CONF, overrides=TINY + ["rlhf.reward.trainer.max_steps=5"])
    result = train_reward(cfg, sft_dir, rows, tmp_path, tmp_path / "ckpt")
    assert result.metrics["length_baseline"] == 1.0 and result.metrics["beats_length_baseline"] == 0.0
    assert result.flagged and "FLAGGED" in caplog.text and "longer-answer-wins" in caplog.text


def test_length_baseline_counts_ties_half() -> None:
    def row(chosen: str, rejected: str) -> dict:
        return {"prompt": message("user", "q"), "chosen": message("assistant", chosen),
                "rejected": message("assistant", rejected)}

    assert length_baseline([row("long one", "short"), row("abc", "xyz"), row("a", "longer")]) == pytest.approx(0.5)
    assert length_baseline([row("abc", "xyz")]) == 0.5


def test_crashed_reward_run_resumes_from_its_checkpoint(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=TINY + ["rlhf.reward.trainer.max_steps=12", "rlhf.reward.trainer.save_steps=5",
                                              "rlhf.reward.trainer.logging_steps=1"])
    rows = marker_rows(120, seed=3)

    def crash_at_step_7(metrics: dict[str, float], step: int) -> None:
        if step == 7:
            raise RuntimeError("killed")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_reward(cfg, sft_dir, rows, tmp_path / "out1", ckpt, crash_at_step_7)
    assert (ckpt / "checkpoint-5").is_dir() and not (tmp_path / "out1" / "reward_model").exists()
    seen: dict[int, dict[str, float]] = {}
    result = train_reward(cfg, sft_dir, rows, tmp_path / "out", ckpt, lambda m, step: seen.setdefault(step, m))
    assert result.metrics["resumed"] == 1 and result.metrics["steps"] == 12 and min(seen) == 6
    assert "rlhf/reward_model/train/loss" in seen[6] and "rlhf/reward_model/train/accuracy" in seen[6]


def test_evaluate_reward_reads_a_saved_model(trained: tuple[Path, dict, list[dict]]) -> None:
    out, metrics, rows = trained
    held = marker_rows(40, seed=7) + length_rows(2)
    found = evaluate_reward(out / "reward_model", held, batch_size=16)
    assert json.loads(json.dumps(found)) == found  # JSON-ready
    assert found["pairs"] == 42 and found["dropped_pairs"] == 0
    assert found["accuracy"] > 0.85 and found["beats_length_baseline"] is True
    assert found["length_baseline"] == pytest.approx(length_baseline(held))
    assert set(found["accuracy_by_source"]) == {"human", "simulated", "import"}
    assert found["margin_p50"] > 0 and found["margin_mean"] > 0

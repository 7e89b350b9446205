"""DPO on a tiny in-process "SFT" model: it widens the held-out log-probability margin of the preferred
answers (those with a marker word), the saved policy is the trained one, the margin is measured on the
answer tokens exactly as DPOTrainer cuts them, and a crashed run resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from lifecycle.align.dpo import answer_tokens, dpo_args, logprob_margins, train_dpo
from lifecycle.config import load_config
from lifecycle.model import load_causal_lm
from tests.unit.test_reward import CONF, CONTEXT, marker_rows, make_sft_dir, message

TINY = ["rlhf.device=cpu", "rlhf.dpo.trainer.per_device_train_batch_size=16", "rlhf.dpo.trainer.learning_rate=2e-3",
        "rlhf.dpo.trainer.logging_steps=10", "rlhf.dpo.trainer.save_steps=1000",
        "pretrain.model.n_layer=2", "pretrain.model.n_head=4", "pretrain.model.n_kv_head=2",
        "pretrain.model.d_model=64", "pretrain.model.d_ff=172"]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sft_dir(tmp_path_factory.mktemp("sft"))


def test_dpo_widens_the_held_out_margin_and_saves_the_policy(sft_dir: Path, tmp_path: Path) -> None:
    """30 DPO steps at batch 16, enough to widen the held-out margin by more than 1: the longest unit test,
    about 15 s."""
    rows = marker_rows(240, seed=5, long_rows=3)
    cfg = load_config(CONF, overrides=TINY + ["rlhf.dpo.trainer.max_steps=30"])
    metrics = train_dpo(cfg, sft_dir, rows, tmp_path, tmp_path / "ckpt").metrics
    assert metrics["dropped_pairs"] == 3
    assert metrics["train_pairs"] + metrics["held_out_pairs"] + metrics["dropped_pairs"] == len(rows)
    assert metrics["margin_after"] > metrics["margin_before"] + 1.0, metrics
    assert metrics["margin_gain"] == pytest.approx(metrics["margin_after"] - metrics["margin_before"])
    assert metrics["resumed"] == 0 and metrics["steps"] == 30
    assert json.loads((tmp_path / "dpo_metrics.json").read_text()) == pytest.approx(metrics)
    policy, tok = load_causal_lm(tmp_path / "policy")  # the saved policy is the trained one
    held = marker_rows(30, seed=9)
    saved = sum(logprob_margins(policy, tok, held)) / len(held)
    sft, _ = load_causal_lm(sft_dir)
    assert saved > sum(logprob_margins(sft, tok, held)) / len(held) + 1.0


def test_margin_counts_the_answer_tokens_as_dpo_trainer_cuts_them(sft_dir: Path, tmp_path: Path) -> None:
    import trl

    model, tok = load_causal_lm(sft_dir)
    rows = marker_rows(5, seed=2)
    cfg = load_config(CONF, overrides=TINY)
    trainer = trl.DPOTrainer(model=model, args=dpo_args(cfg, tmp_path, CONTEXT), processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(
                                 [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]))
    for i, row in enumerate(rows):
        example = trainer.train_dataset[i]
        for side in ("chosen", "rejected"):
            ids, start = answer_tokens(tok, row, side)
            assert ids[:start] == example["prompt_ids"] and ids[start:] == example[f"{side}_ids"]
    assert tok.decode(answer_tokens(tok, rows[0], "chosen")[0][answer_tokens(tok, rows[0], "chosen")[1]:]) == (
        rows[0]["chosen"][0]["content"] + "<|im_end|>\n")
    same = {"prompt": message("user", "q"), "chosen": message("assistant", "garden"),
            "rejected": message("assistant", "garden")}
    assert logprob_margins(model, tok, [same]) == [0.0]
    batched = logprob_margins(model, tok, rows, batch_size=5)  # right padding leaves the sums alone
    assert batched == pytest.approx(logprob_margins(model, tok, rows, batch_size=1), abs=1e-4)


def test_crashed_dpo_run_resumes_from_its_checkpoint(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=TINY + ["rlhf.dpo.trainer.max_steps=8", "rlhf.dpo.trainer.save_steps=4",
                                              "rlhf.dpo.trainer.logging_steps=1"])
    rows = marker_rows(100, seed=4)

    def crash_at_step_6(metrics: dict[str, float], step: int) -> None:
        if step == 6:
            raise RuntimeError("killed")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_dpo(cfg, sft_dir, rows, tmp_path / "out1", ckpt, crash_at_step_6)
    assert (ckpt / "checkpoint-4").is_dir() and not (tmp_path / "out1" / "policy").exists()
    seen: dict[int, dict[str, float]] = {}
    result = train_dpo(cfg, sft_dir, rows, tmp_path / "out", ckpt, lambda m, step: seen.setdefault(step, m))
    assert result.metrics["resumed"] == 1 and result.metrics["steps"] == 8 and min(seen) == 5
    assert "rlhf/dpo/train/loss" in seen[5] and "rlhf/dpo/train/rewards/margins" in seen[5]

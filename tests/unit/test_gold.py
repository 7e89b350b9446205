"""Proxy vs gold during policy optimisation, on tiny in-process models: a rigged RLOO run whose reward is
length while the gold judge (ROUGE-L against short references) is not logs the curves at step 0, every N
steps and the last, the proxy rises, gold falls and the over-optimisation alarm goes off; a healthy history
raises none; DPO logs the curves too (its implicit reward as the proxy, 0 with KL 0 before any update); a
preference set judged by people has no gold curve and the health report says why; a resumed run keeps its
curve; the gold set comes from held-out simulated pairs with references only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lifecycle.align.dpo import train_dpo
from lifecycle.align.gold import GoldPoint, GoldPrompt, GoldSet, gold_set, greedy_answers
from lifecycle.align.health import HealthPoint, assess
from lifecycle.align.pairs import split_pairs
from lifecycle.align.policy import train_policy
from lifecycle.config import load_config
from lifecycle.config.rlhf import GoldConfig, HealthConfig
from lifecycle.model import load_causal_lm
from tests.unit.test_dpo import TINY as DPO_TINY
from tests.unit.test_policy import CONF, PROMPTS, WORDS, completion_length, even_tokens, one_thread, sft_dir, tiny
from tests.unit.test_reward import make_sft_dir, marker_rows

__all__ = ["one_thread", "sft_dir"]  # fixtures shared with test_policy
HELD_OUT = [[{"role": "user", "content": f"What does {w} {v} return?"}] for w in WORDS[:8] for v in ("load", "dump")]
GOLD = GoldConfig(every=4, prompts=32, max_new_tokens=16, batch_size=8, min_proxy_rise=0.0, min_gold_fall=0.01)
BOUNDS = HealthConfig(max_kl=0.5, max_length_growth=2.0, min_reward_rise=0.05)


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, dict[int, float]] = {}

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.seen.setdefault(k, {})[step] = v


def own_answers(sft_dir: Path) -> GoldSet:
    """References the SFT model's greedy answers already match (gold 1.0 at step 0): any drift lowers gold."""
    model, tok = load_causal_lm(sft_dir)
    answers = greedy_answers(model.eval(), tok, HELD_OUT, 16, 8)
    return GoldSet([GoldPrompt(p, tok.decode(a, skip_special_tokens=True)) for p, (_, a) in zip(HELD_OUT, answers)],
                   "")


def test_rewarding_length_raises_the_proxy_lowers_gold_and_sets_off_the_alarm(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=12, learning_rate=1e-3, max_completion_length=32)
                      + [f"rlhf.gold.{k}={v}" for k, v in GOLD.model_dump().items()]
                      + ["rlhf.health.max_length_growth=100"])  # only the gold rule may fire
    hook = Recorder()
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt", hook,
                          reward_funcs=[completion_length], gold=own_answers(sft_dir))
    m, health = result.metrics, result.health
    for name in ("proxy", "gold", "kl", "length"):
        assert sorted(hook.seen[f"rlhf/gold/{name}"]) == [0, 4, 8, 12], name  # step 0, every 4, the last
    gold, proxy = hook.seen["rlhf/gold/gold"], hook.seen["rlhf/gold/proxy"]
    assert gold[0] == pytest.approx(1.0) and hook.seen["rlhf/gold/kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert proxy[0] == pytest.approx(hook.seen["rlhf/gold/length"][0])  # the proxy is the reward: length
    assert m["proxy_last"] > m["proxy_first"] + 1 and m["gold_last"] < m["gold_first"] - 0.1, m
    assert m["gold_points"] == 4 and m["gold_first"] == gold[0] and m["gold_last"] == gold[12]
    assert health.alarm and any(r.startswith("over-optimisation") for r in health.reasons), health.reasons
    assert not any("length grew" in r or "KL" in r for r in health.reasons)  # the gold rule alone fired
    text = health.markdown()
    assert "held-out gold judge" in text and "over-optimisation" in text and "gold curve: greedy answers to 16" in text
    report = json.loads((tmp_path / "out" / "policy_health.json").read_text())
    assert [p["step"] for p in report["gold"]] == [0, 4, 8, 12] and report["alarm"] is True


def points(proxy: list[float], gold: list[float], kl: float = 0.01) -> list[GoldPoint]:
    return [GoldPoint(step=4 * i, gold=g, proxy=p, kl=kl * i, length=10.0) for i, (p, g) in enumerate(zip(proxy, gold))]


def test_assess_judges_gold_histories() -> None:
    calm = [HealthPoint(step=i + 1, reward=0.5 + 0.01 * i, kl=0.02, length=10.0) for i in range(12)]
    healthy = assess(calm, BOUNDS, points([0.1, 0.2, 0.3], [0.30, 0.32, 0.35]), GOLD)
    assert not healthy.alarm and healthy.summary["gold_first"] == 0.30 and healthy.summary["proxy_last"] == 0.3
    assert "held-out gold judge, ROUGE-L (first -> last) | 0.3 -> 0.35" in healthy.markdown()
    hacked = assess(calm, BOUNDS, points([0.1, 0.4, 0.9], [0.30, 0.25, 0.20]), GOLD)
    assert hacked.alarm and hacked.reasons[0].startswith("over-optimisation") and "0.3 -> 0.2" in hacked.reasons[0]
    assert not assess(calm, BOUNDS, points([0.1, 0.1, 0.1], [0.30, 0.2, 0.1]), GOLD).alarm  # proxy flat: not hacking
    assert not assess(calm, BOUNDS, points([0.1, 0.2], [0.300, 0.295]), GOLD).alarm  # within min_gold_fall
    assert not assess(calm, BOUNDS, points([0.1], [0.3]), GOLD).alarm  # one point: no curve
    stricter = GOLD.model_copy(update={"min_proxy_rise": 1.0})
    assert not assess(calm, BOUNDS, points([0.1, 0.4, 0.9], [0.30, 0.25, 0.20]), stricter).alarm  # margin in YAML
    # no training history (DPO): the leash is checked on the measured KL
    drift = assess([], BOUNDS, points([0.1, 0.4, 0.9], [0.3, 0.31, 0.32], kl=0.4), GOLD)
    assert drift.alarm and "KL to the reference there reached 0.8" in drift.reasons[0]
    assert "**Reward hacking alarm**" in drift.markdown() and "reward (first -> last quarter)" not in drift.markdown()


def test_dpo_logs_the_gold_curve(tmp_path: Path) -> None:
    sft = make_sft_dir(tmp_path / "sft")
    rows = [{**r, "source": "simulated", "reference": r["chosen"][0]["content"]} for r in marker_rows(120, seed=5)]
    cfg = load_config(CONF, overrides=DPO_TINY + ["rlhf.dpo.trainer.max_steps=6", "rlhf.gold.every=4",
                                                  "rlhf.gold.max_new_tokens=8"])
    hook = Recorder()
    result = train_dpo(cfg, sft, rows, tmp_path / "out", tmp_path / "ckpt", hook)
    held = {json.dumps(r["prompt"]) for r in split_pairs(rows, cfg.rlhf.held_out_fraction)[1]}
    assert sorted(hook.seen["rlhf/gold/gold"]) == [0, 4, 6] and len(held) >= 1
    assert hook.seen["rlhf/gold/proxy"][0] == pytest.approx(0.0, abs=1e-5)  # implicit reward: policy == reference
    assert hook.seen["rlhf/gold/kl"][0] == pytest.approx(0.0, abs=1e-6) and hook.seen["rlhf/gold/kl"][6] > 0
    m = result.metrics
    assert m["gold_points"] == 3 and 0 <= m["gold_last"] <= 1 and "margin_after" in m
    assert "DPO implicit reward" in result.health.notes[0] and f"{len(held)} held-out prompts" in result.health.notes[0]
    report = json.loads((tmp_path / "out" / "policy_health.json").read_text())
    assert [p["step"] for p in report["gold"]] == [0, 4, 6] and report["alarm"] == result.health.alarm


def test_people_judged_preferences_have_no_gold_curve_and_the_report_says_so(sft_dir: Path, tmp_path: Path) -> None:
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": "json"}], "source": "human",
             "rejected": [{"role": "assistant", "content": "csv"}], "reference": "json"} for p in HELD_OUT]
    gold = gold_set(rows, GOLD)
    assert gold.prompts == [] and "the gold signal is people" in gold.note
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=2))
    hook = Recorder()
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt", hook,
                          reward_funcs=[even_tokens], gold=gold)
    assert not any(k.startswith("rlhf/gold/") for k in hook.seen) and result.metrics["gold_points"] == 0
    assert math.isnan(result.metrics["gold_last"]) and not result.health.alarm
    assert "the gold signal is people" in result.health.markdown() and "held-out gold" not in result.health.markdown()
    assert json.loads((tmp_path / "out" / "policy_health.json").read_text())["gold"] == []


def test_gold_set_takes_held_out_simulated_prompts_with_references() -> None:
    def row(i: int, source: str = "simulated", reference: str | None = "ref") -> dict[str, Any]:
        r = {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "source": source}
        return r | ({"reference": f"{reference} {i}"} if reference else {})

    rows = [row(i) for i in range(6)] + [row(1), row(7, "feedback", None), row(8, "human")]
    found = gold_set(rows, GOLD)
    assert sorted(p.prompt[0]["content"] for p in found.prompts) == [f"q{i}" for i in range(6)]  # each once
    assert found.note == "" and gold_set(rows, GOLD.model_copy(update={"prompts": 2})).prompts == found.prompts[:2]
    assert "no reference answer" in gold_set([row(1, reference=None)], GOLD).note  # a snapshot from before
    assert "rlhf.gold.prompts is 0" in gold_set(rows, GOLD.model_copy(update={"prompts": 0})).note
    assert "no held-out prompts" in gold_set([], GOLD).note
    train, held = split_pairs([row(i) for i in range(40)] * 2, 0.3)  # every pair of a prompt on one side
    assert {json.dumps(r["prompt"]) for r in train}.isdisjoint({json.dumps(r["prompt"]) for r in held}) and held


def test_a_resumed_run_keeps_its_gold_curve(sft_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=tiny("rloo", max_steps=6, save_steps=2) + ["rlhf.gold.every=2",
                                                                                   "rlhf.gold.max_new_tokens=8"])
    gold = GoldSet([GoldPrompt(p, "json") for p in HELD_OUT[:4]], "")

    def crash_at_step_3(metrics: dict[str, float], step: int) -> None:
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt", crash_at_step_3,
                     reward_funcs=[even_tokens], gold=gold)
    hook = Recorder()
    result = train_policy(cfg, sft_dir, None, PROMPTS, tmp_path / "out", tmp_path / "ckpt", hook,
                          reward_funcs=[even_tokens], gold=gold)
    assert result.metrics["resumed"] == 1 and sorted(hook.seen["rlhf/gold/gold"]) == [4, 6]  # 0 and 2 came back
    report = json.loads((tmp_path / "out" / "policy_health.json").read_text())
    assert [p["step"] for p in report["gold"]] == [0, 2, 4, 6] and result.metrics["gold_points"] == 4


def test_the_report_card_plots_proxy_gold_and_kl(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lifecycle.evaluate.plots import REWARD_PANELS, collect_panels, plot_curves

    logged = {"rlhf/gold/proxy": [0.1, 0.5, 0.9], "rlhf/gold/gold": [0.3, 0.25, 0.2], "rlhf/gold/kl": [0, 0.1, 0.3],
              "rlhf/policy/train/reward": [0.1, 0.2, 0.3]}
    client = SimpleNamespace(get_metric_history=lambda run_id, key: [
        SimpleNamespace(step=4 * i, value=v, timestamp=i) for i, v in enumerate(logged[key])])
    run = SimpleNamespace(info=SimpleNamespace(run_id="r"), data=SimpleNamespace(metrics={k: 0.0 for k in logged}))
    panels, notes = collect_panels(client, {"rlhf": run}, REWARD_PANELS, "")
    curves = {s.label: s for p in panels for s in p.series}
    assert {"proxy", "gold", "KL", "reward"} <= set(curves) and not notes
    assert curves["gold"].steps == [0.0, 4.0, 8.0] and curves["gold"].values == logged["rlhf/gold/gold"]
    assert plot_curves(panels, tmp_path / "reward_kl.png").read_bytes()[:4] == b"\x89PNG"

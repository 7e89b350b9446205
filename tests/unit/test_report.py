"""The report card against a real (SQLite) MLflow store: costs by hand, deltas by direction, plots on disk,
escaped samples, the gate's rules, and a DPO run without a champion."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lifecycle.evaluate.report import ReportCard, build_report, price_for, report_markdown_for_prefect
from lifecycle.tracking import setup_mlflow

PNG = b"\x89PNG\r\n\x1a\n"
PRICES = {"cpu": 0.10, "cuda:NVIDIA H200": 4.0, "cuda": 2.0}
CURVE = [3.0, 2.5, 2.2]  # a loss history, steps 10, 20, 30


def log_run(client: MlflowClient, exp: str, parent: str, stage: str, tags: dict[str, str],
            metrics: dict[str, list[float]], finish: bool = True) -> str:
    run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "lifecycle.stage": stage,
                                       "lifecycle.cache_hit": "false"} | tags)
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric(key, v, 1_000 + step, step * 10) for key, values in metrics.items()
                                   for step, v in enumerate(values, 1)])
    if finish:
        client.set_terminated(rid)
    return rid


def new_parent(client: MlflowClient, exp: str) -> str:
    return client.create_run(exp, tags={"lifecycle.role": "pipeline"}).info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    exp = setup_mlflow(tmp_path_factory.mktemp("state"), "report-test")
    client = MlflowClient()
    earlier = new_parent(client, exp)  # computed pretraining on two H200s, two hours
    pretrain = log_run(client, exp, earlier, "pretrain",
                       {"lifecycle.device": "cuda:NVIDIA H200", "lifecycle.device_count": "2"},
                       {"pretrain/seconds": [7200.0], "pretrain/tokens": [4e6], "pretrain/train/loss": CURVE,
                        "pretrain/eval/val_loss": [3.1, 2.6]})
    parent = new_parent(client, exp)
    log_run(client, exp, parent, "ingest", {}, {"ingest/seconds": [36.0]})
    log_run(client, exp, parent, "pretrain", {"lifecycle.cache_hit": "true", "lifecycle.cached_from_run": pretrain},
            {"pretrain/cache_hit": [1.0]})
    log_run(client, exp, parent, "sft", {"lifecycle.device": "cuda"},
            {"sft/seconds": [1800.0], "sft/train/loss": CURVE, "sft/eval/loss": [2.9, 2.4],
             "sft/train/num_tokens": [1e5, 2e5, 5e5]})
    log_run(client, exp, parent, "rlhf", {"lifecycle.device": "tpu:v5e"},
            {"rlhf/seconds": [900.0], "rlhf/reward_model/train/loss": [0.7, 0.6], "rlhf/policy/train/loss": CURVE,
             "rlhf/policy/train/reward": [-0.3, 0.1, 0.4], "rlhf/policy/train/kl": [0.0, 0.02, 0.05],
             "rlhf/policy/train/num_tokens": [5e4, 1e5]})
    log_run(client, exp, parent, "evaluate", {}, {}, finish=False)  # the stage calling build_report
    dpo_parent = new_parent(client, exp)
    log_run(client, exp, dpo_parent, "rlhf", {}, {"rlhf/seconds": [60.0], "rlhf/dpo/train/loss": [0.69, 0.5]})
    return {"parent": parent, "pretrain": pretrain, "dpo_parent": dpo_parent}


def evaluation(champion: bool) -> dict[str, Any]:
    cand = {"val_bpb": 2.1, "rouge_l_rag": 0.2, "latency_p50_ms": 90.0, "tokens_per_s": 300.0,
            "win_rate_vs_champion": 0.55}
    champ = {"val_bpb": 2.2, "rouge_l_rag": 0.25, "latency_p50_ms": 80.0, "tokens_per_s": 250.0}
    sample = {"question": "What does json.dumps do?", "reference": "Serialize obj.",
              "candidate": "<script>alert('x')</script> a|b\nnext line & more", "sft": "x" * 1000}
    comparisons = {"candidate_vs_sft": {"rouge_l_rag_delta": interval(0.04, 0.01, 0.07),
                                        "gold_win_rate": interval(0.55, 0.41, 0.69)},
                   "candidate_rag_vs_no_rag": {"rouge_l_delta": interval(0.1, 0.06, 0.14)}}
    if champion:
        comparisons["candidate_vs_champion"] = {"val_bpb_delta": interval(-0.1, -0.12, -0.08),
                                                "reward_win_rate": interval(0.55, 0.35, 0.75)}
    return {"models": {"candidate": "lifecycle-gpt/7", "champion": "lifecycle-gpt/5" if champion else None,
                       "sft": "lifecycle-gpt/6", "base": "lifecycle-gpt-base/3"},
            "metrics": {"candidate": cand, "champion": champ if champion else None, "sft": {"val_bpb": 2.15},
                        "base": {}},
            "samples": [sample], "prompts": 48, "comparisons": comparisons,
            "intervals": {"candidate": {"rouge_l_rag": interval(0.2, 0.15, 0.25)}}}


def interval(estimate: float, low: float, high: float) -> dict[str, Any]:
    return {"estimate": estimate, "low": low, "high": high, "n": 48, "level": 0.95}


DECISION = {"passed": False, "mode": "champion", "candidate": "lifecycle-gpt/7", "champion": "lifecycle-gpt/5",
            "reason": "refused: rouge_l_drop",
            "rules": [{"rule": "bpb_regression", "metric": "val_bpb", "value": 2.1, "threshold": 2.2, "op": "<=",
                       "passed": True, "detail": "champion 2.2 + 0"},
                      {"rule": "rouge_l_drop", "metric": "rouge_l_rag", "value": 0.2, "threshold": 0.24, "op": ">=",
                       "passed": False, "detail": "champion 0.25 - 0.01"},
                      {"rule": "win_rate", "metric": "win_rate_vs_sft", "value": None, "threshold": 0.5, "op": ">=",
                       "passed": None, "detail": "no reward model"},
                      {"rule": "sft_gold_win_rate", "metric": "gold_win_rate_vs_sft", "value": 0.41, "threshold": 0.4,
                       "op": ">=", "passed": True, "detail": "gold", "bound": "lower",
                       "interval": interval(0.55, 0.41, 0.69)}]}


def row(markdown: str, first_cell: str) -> list[str]:
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def assert_plots_valid(card: ReportCard, out: Path) -> set[str]:
    referenced = set(re.findall(r"!\[[^\]]*\]\(plots/([^)]+\.png)\)", card.markdown))
    assert referenced == {p.name for p in card.plots} == {p.name for p in (out / "plots").glob("*")}
    for name in referenced:
        assert (out / "plots" / name).read_bytes()[:8] == PNG
    assert (out / "report.md").read_text(encoding="utf-8") == card.markdown
    assert not list(out.glob(".report-*")), "the staging folder is left behind"
    return referenced


def test_report_with_champion(store: dict[str, Any], tmp_path: Path) -> None:
    card = build_report(store["parent"], evaluation(True), tmp_path, PRICES, "EUR", DECISION)
    md = card.markdown
    assert assert_plots_valid(card, tmp_path) == {"deltas.png", "intervals.png", "losses.png", "reward_kl.png"}
    assert md.startswith("# Report card: `lifecycle-gpt/7` vs champion `lifecycle-gpt/5`")
    # deltas: sign of candidate - champion, verdict by direction
    assert row(md, "`val_bpb`")[1:5] == ["2.1", "2.2", "-0.1 (-4.5%)", "better"]
    assert row(md, "`rouge_l_rag`")[3:5] == ["-0.05 (-20.0%)", "worse"]
    assert row(md, "`latency_p50_ms`")[3:5] == ["+10 (+12.5%)", "worse"]
    assert row(md, "`tokens_per_s`")[3:5] == ["+50 (+20.0%)", "better"]
    assert row(md, "`win_rate_vs_champion`")[2:5] == ["—", "—", "—"]
    # costs: hours x device count x price; the cached stage at its original cost, the TPU left out
    costs = {c.stage: c for c in card.costs}
    assert costs["pretrain"].cached and costs["pretrain"].computed_by == store["pretrain"]
    assert costs["pretrain"].cost == pytest.approx(2.0 * 2 * 4.0)
    assert costs["sft"].cost == pytest.approx(0.5 * 2.0)
    assert costs["ingest"].cost == pytest.approx(0.01 * 0.10)
    assert costs["rlhf"].cost is None and costs["evaluate"].cost is None
    assert card.total_cost == pytest.approx(16.0 + 1.0 + 0.001)
    assert card.run_cost == pytest.approx(1.0 + 0.001)
    assert card.cost_per_million_tokens == pytest.approx((16.0 + 1.0) / 4.6)
    assert row(md, "pretrain")[1] == f"cached: computed by run `{store['pretrain']}`"
    assert row(md, "pretrain")[-1] == "16.00 EUR"
    assert row(md, "rlhf")[-1] == "no price configured for `tpu:v5e`"
    assert "Left out of the totals: rlhf (no price for tpu:v5e), evaluate (no wall time)" in md
    assert "= 4,600,000; cost per million training tokens: 3.70 EUR" in md
    # samples: HTML shown as text, pipes and newlines kept inside the cell, long answers cut
    cells = row(md, "What does json.dumps do?")
    assert cells[2] == "&lt;script&gt;alert('x')&lt;/script&gt; a\\|b ↵ next line &amp; more"
    assert "<script>" not in md and cells[3].endswith("…") and len(cells[3]) < 300
    # the gate's rules
    assert row(md, "bpb_regression")[2:5] == ["2.1", "<= 2.2", "pass"]
    assert row(md, "rouge_l_drop")[2:5] == ["0.2", ">= 0.24", "**FAIL**"]
    assert row(md, "win_rate")[2:5] == ["—", ">= 0.5", "skipped"]
    assert row(md, "sft_gold_win_rate")[2:7] == ["0.41", ">= 0.4", "pass", "lower", "[0.41, 0.69], n 48"]
    # every comparison with its interval, n and a verdict only where the interval excludes no difference
    assert "## Comparisons with 95% intervals" in md
    assert row(md, "candidate vs champion")[1:] == ["bits per byte, Δ", "-0.1", "[-0.12, -0.08]", "48", "better"]
    reward = [r for r in md.splitlines() if r.startswith("| candidate vs champion | reward-model")][0]
    assert reward.endswith("| 0.55 | [0.35, 0.75] | 48 | not distinguishable |")
    assert row(md, "candidate: with vs without retrieval")[2:] == ["0.1", "[0.06, 0.14]", "48", "better"]
    assert row(md, "candidate")[1:] == ["`rouge_l_rag`", "0.2", "[0.15, 0.25]", "48"]
    assert "## Decision: refused: keep the champion" in md
    prefect = report_markdown_for_prefect(card)
    assert "![" not in prefect and "`plots/deltas.png` in the evaluate run's MLflow artifacts" in prefect


def test_report_dpo_without_champion(store: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "stale.png").write_bytes(PNG)  # from an earlier report in the same folder
    card = build_report(store["dpo_parent"], evaluation(False), tmp_path, {"cpu": 0.10}, "USD")
    md = card.markdown
    assert assert_plots_valid(card, tmp_path) == {"metrics.png", "intervals.png", "losses.png"}
    assert "(no champion yet)" in md and "No champion yet" in md
    assert "Δ (candidate − champion)" not in md and "| metric | candidate | sft |" in md
    assert "candidate vs champion" not in md and row(md, "candidate vs sft")[-1] == "better"
    assert "The policy was trained by DPO: no reward model, so no training reward or KL curve" in md
    assert "No rlhf curves: run" in md and "No pretrain curves: this pipeline run has no pretrain stage." in md
    assert card.cost_per_million_tokens is None and card.total_cost == pytest.approx(60 / 3600 * 0.10)
    assert "## Decision" not in md


def test_price_lookup() -> None:
    assert price_for("cuda:NVIDIA H200", PRICES) == 4.0
    assert price_for("cuda:NVIDIA A100", PRICES) == 2.0
    assert price_for("cpu", PRICES) == 0.10
    assert price_for("tpu:v5e", PRICES) is None

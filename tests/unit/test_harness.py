"""Standard benchmarks through lm-evaluation-harness, offline, on a task of our own (tests/harness_fixtures.py)
and a tiny model built here: the scores are lm-eval's (accuracy recomputed by hand from the model's
log-likelihoods), with standard errors, named for MLflow and the report card; a task lm-eval does not know, or
an include_path that is no folder, stops the run in its pre-flight with the key named; the task files are
part of the evaluate stage's key; the gate's harness rules pass and fail as configured."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lifecycle.config import load_config
from lifecycle.errors import ConfigError
from lifecycle.evaluate.gate import decide
from lifecycle.evaluate.harness import harness_lines, harness_metrics, run_harness
from lifecycle.evaluate.metrics import load_model
from lifecycle.registry import ModelRef
from lifecycle.stages import key_extras
from tasks.common import check_stages
from tasks.graph import GRAPH
from tests.conftest import CONF
from tests.harness_fixtures import PAIRS, TASK, write_task
from tests.unit.test_promotion import evaluation
from tests.unit.test_rag_answer import save_tiny_policy


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("harness-tasks"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(tmp_path_factory.mktemp("harness-model") / "model")


def harness_overrides(task_dir: Path, *more: str) -> list[str]:
    return [f"evaluate.harness.tasks=[{TASK}]", f"evaluate.harness.include_path={task_dir}", *more]


def by_hand(model_dir: Path) -> tuple[float, float]:
    """(acc, acc_norm) of the task computed from the model's log-likelihoods: the answer whose continuation
    (" " + choice after "Q: ...\\nA:") is likeliest, in total and per character of the choice."""
    model, tokenizer = load_model(model_dir, torch.device("cpu"), None)

    def loglikelihood(context: str, continuation: str) -> float:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.inference_mode():
            logp = model(torch.tensor([whole])).logits.log_softmax(-1)[0]  # (tokens, vocab)
        return sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole)))

    acc = acc_norm = 0
    for a, b in PAIRS:
        choices = [str(a + b), str(a + b + 1), str(a * b + 7)]
        scores = [loglikelihood(f"Q: What is {a} plus {b}?\nA:", " " + c) for c in choices]
        acc += max(range(3), key=lambda i: scores[i]) == 0
        acc_norm += max(range(3), key=lambda i: scores[i] / len(choices[i])) == 0
    return acc / len(PAIRS), acc_norm / len(PAIRS)


def test_scores_on_our_own_task_are_lm_evals_with_standard_errors(task_dir: Path, model_dir: Path) -> None:
    cfg = load_config(CONF, overrides=harness_overrides(task_dir))
    model, tokenizer = load_model(model_dir, torch.device("cpu"), None)
    found = run_harness(model, tokenizer, cfg.evaluate.harness, cfg.evaluate.intervals)
    assert set(found["scores"]) == {f"{TASK}/acc", f"{TASK}/acc_norm"}
    assert found["tasks"] == {TASK: {"version": 1.0, "n_shot": 0, "n": len(PAIRS)}}
    assert found["seconds"] > 0
    acc, acc_norm = by_hand(model_dir)
    assert acc != acc_norm  # the two metrics are told apart
    for name, expected in ((f"{TASK}/acc", acc), (f"{TASK}/acc_norm", acc_norm)):
        score = found["scores"][name]
        assert score["value"] == pytest.approx(expected) and score["n"] == len(PAIRS) and score["higher_is_better"]
        # a mean's standard error: the sample standard deviation over sqrt(n)
        assert score["stderr"] == pytest.approx(math.sqrt(expected * (1 - expected) / (len(PAIRS) - 1)))
        iv = score["interval"]
        assert iv["low"] < expected < iv["high"] and iv["high"] - expected == pytest.approx(1.96 * score["stderr"],
                                                                                           rel=1e-3)
    metrics = harness_metrics({"scores": {"candidate": found["scores"]}, "seconds": {"candidate": found["seconds"]}})
    assert metrics["harness/seconds"] == found["seconds"]
    assert metrics[f"harness/candidate/{TASK}/acc"] == pytest.approx(acc)
    assert metrics[f"harness/candidate/{TASK}/acc_stderr"] == found["scores"][f"{TASK}/acc"]["stderr"]

    few = load_config(CONF, overrides=harness_overrides(task_dir, "evaluate.harness.limit=4"))
    assert {s["n"] for s in run_harness(model, tokenizer, few.evaluate.harness, few.evaluate.intervals)[
        "scores"].values()} == {4}


def test_the_report_card_shows_each_model_with_its_standard_error() -> None:
    score = {"value": 0.5, "stderr": 0.1667, "n": 10, "higher_is_better": True, "interval": None}
    lines = harness_lines({"harness": {"scores": {"candidate": {f"{TASK}/acc": score},
                                                  "sft": {f"{TASK}/acc": score | {"value": 0.3}}},
                                       "tasks": {"candidate": {TASK: {"version": 1.0, "n_shot": 0, "n": 10}}}}})
    table = "\n".join(lines)
    assert "| task/metric | candidate | sft | n-shot / n | better |" in table
    assert f"| `{TASK}/acc` | 0.5 ± 0.1667 | 0.3 ± 0.1667 | 0 / 10 | higher |" in table
    assert harness_lines({"metrics": {}}) == []  # the harness off: no section


def test_an_unknown_task_stops_the_pre_flight_naming_the_key(task_dir: Path, tmp_path: Path) -> None:
    """check_stages is the pipeline's pre-flight (flows/pipeline.py), before any stage runs; a name our folder
    lacks is looked up among lm-eval's built-in tasks (indexing them takes seconds)."""
    cfg = load_config(CONF, overrides=harness_overrides(task_dir, f"evaluate.harness.tasks=[{TASK}, hellaswg]"))
    with pytest.raises(ConfigError) as err:
        check_stages(cfg, ("evaluate",))
    message = str(err.value)
    assert "evaluate.harness.tasks" in message and "hellaswg (did you mean hellaswag?)" in message
    assert "[--set evaluate.harness.tasks=[toy_sums, hellaswg]]" in message  # where it was set

    missing = load_config(CONF, overrides=harness_overrides(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"evaluate.harness.include_path = .*nowhere.*: not a folder"):
        check_stages(missing, ("evaluate",))
    check_stages(load_config(CONF, overrides=harness_overrides(task_dir)), ("evaluate",))  # our task: known


def test_the_task_files_are_part_of_the_evaluate_key(task_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=harness_overrides(write_task(tmp_path / "tasks")))
    before = key_extras(GRAPH["evaluate"], cfg, lambda name: "champion")
    data = tmp_path / "tasks" / f"{TASK}.jsonl"
    data.write_text(data.read_text().replace("What is 1 plus 2?", "What is 1 + 2?"))
    after = key_extras(GRAPH["evaluate"], cfg, lambda name: "champion")
    assert before["harness_tasks"] != after["harness_tasks"] and before["serve"] == after["serve"]
    assert "harness_tasks" not in key_extras(GRAPH["evaluate"], load_config(CONF), lambda name: "champion")


def test_gate_rules_on_harness_scores_must_name_a_task_the_harness_runs(task_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"promote.harness.minimums.arc_easy/acc = 0.3: task 'arc_easy' is not "
                                          r"among evaluate.harness.tasks \(toy_sums\)"):
        load_config(CONF, overrides=harness_overrides(task_dir, "promote.harness.minimums.arc_easy/acc=0.3"))
    with pytest.raises(ConfigError, match=r"promote.harness.max_drop_vs_sft.toy_sums/acc = -0.1: Input should be "
                                          r"greater than or equal to 0"):
        load_config(CONF, overrides=harness_overrides(task_dir, "promote.harness.max_drop_vs_sft.toy_sums/acc=-0.1"))


def score(value: float, stderr: float | None = 0.05, higher_is_better: bool = True) -> dict[str, Any]:
    interval = None if stderr is None else {"estimate": value, "low": value - 1.96 * stderr,
                                            "high": value + 1.96 * stderr, "n": 100, "level": 0.95}
    return {"value": value, "stderr": stderr, "n": 100, "higher_is_better": higher_is_better, "interval": interval}


def with_harness(against_champion: bool, **scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """test_promotion's sound evaluation (every other rule passes) with harness scores by role."""
    found = evaluation(ModelRef("lifecycle-gpt", "2"), ModelRef("lifecycle-gpt", "1") if against_champion else None)
    return found | {"harness": {"scores": scores, "tasks": {}}}


def harness_verdicts(decision: Any) -> dict[str, bool | None]:
    return {r.rule: r.passed for r in decision.rules if r.rule.startswith("harness_")}


def test_harness_gate_rules_pass_and_fail_as_configured(task_dir: Path) -> None:
    rules = ["promote.harness.minimums.toy_sums/acc=0.40", "promote.harness.maximums.toy_sums/perplexity=20",
             "promote.harness.max_drop_vs_champion.toy_sums/acc=0.02",
             "promote.harness.max_drop_vs_sft.toy_sums/perplexity=1.0"]
    cfg = load_config(CONF, overrides=harness_overrides(task_dir, *rules)).promote
    good = {"toy_sums/acc": score(0.50), "toy_sums/perplexity": score(12.0, 1.0, higher_is_better=False)}
    sound = with_harness(True, candidate=good, champion={"toy_sums/acc": score(0.51)},
                         sft={"toy_sums/perplexity": score(11.5, 1.0, False)})
    decision = decide(cfg, sound, alarm="none")
    assert decision.passed and harness_verdicts(decision) == {
        "harness_minimum/toy_sums/acc": True, "harness_maximum/toy_sums/perplexity": True,
        "harness_drop_vs_champion/toy_sums/acc": True, "harness_drop_vs_sft/toy_sums/perplexity": True}
    assert decision.tags()["lifecycle.gate.harness_minimum/toy_sums/acc"].startswith(
        "pass: harness_minimum/toy_sums/acc: harness/toy_sums/acc 0.5000 >= 0.4000")

    worse = with_harness(True, candidate={"toy_sums/acc": score(0.38), "toy_sums/perplexity": score(14.0, 1.0, False)},
                         champion={"toy_sums/acc": score(0.51)}, sft={"toy_sums/perplexity": score(11.5, 1.0, False)})
    refused = decide(cfg, worse, alarm="none")
    assert not refused.passed and {r.rule for r in refused.failed} == {
        "harness_minimum/toy_sums/acc", "harness_drop_vs_champion/toy_sums/acc",
        "harness_drop_vs_sft/toy_sums/perplexity"}  # perplexity 14 <= 20 passes; 2.5 above the SFT model's fails
    drop = next(r for r in refused.rules if r.rule == "harness_drop_vs_sft/toy_sums/perplexity")
    assert drop.op == "<=" and drop.value == pytest.approx(2.5) and "lower is better" in drop.detail

    no_champion = decide(cfg, with_harness(False, candidate=good, sft={"toy_sums/perplexity": score(11.5, 1.0, False)}),
                         alarm="none")
    assert no_champion.passed and harness_verdicts(no_champion)["harness_drop_vs_champion/toy_sums/acc"] is None


def test_a_bound_or_a_misspelt_metric_fails_where_the_estimate_would_pass(task_dir: Path) -> None:
    on_bound = load_config(CONF, overrides=harness_overrides(task_dir, "promote.harness.minimums.toy_sums/acc=0.40",
                                                             "promote.harness.bound=interval")).promote
    narrow, wide = score(0.50, 0.01), score(0.50, 0.06)  # lower bounds 0.48 and 0.38
    assert decide(on_bound, with_harness(False, candidate={"toy_sums/acc": narrow}), "none").passed
    refused = decide(on_bound, with_harness(False, candidate={"toy_sums/acc": wide}), "none")
    assert [r.rule for r in refused.failed] == ["harness_minimum/toy_sums/acc"]
    assert refused.failed[0].bound == "lower" and refused.failed[0].value == pytest.approx(0.50 - 1.96 * 0.06)
    no_stderr = decide(on_bound, with_harness(False, candidate={"toy_sums/acc": score(0.5, None)}), "none")
    assert not no_stderr.passed  # a bound that was not recorded cannot show what the rule asks

    misspelt = load_config(CONF, overrides=harness_overrides(task_dir,
                                                             "promote.harness.minimums.toy_sums/acc_nrm=0.1")).promote
    decision = decide(misspelt, with_harness(False, candidate={"toy_sums/acc": narrow}), "none")
    assert not decision.passed and decision.failed[0].rule == "harness_minimum/toy_sums/acc_nrm"
    assert "no score toy_sums/acc_nrm (its toy_sums scores: acc)" in decision.failed[0].detail

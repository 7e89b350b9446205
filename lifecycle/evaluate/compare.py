"""Intervals on every number the evaluation compares: a seeded paired bootstrap (lifecycle/evaluate/bootstrap.py,
settings in conf/evaluate.yaml `intervals`) over the held-out questions, or over the validation texts for bits
per byte. The gate (gate.py) reads them; the report card shows them.

evaluation.json (tasks/evaluate.py writes it; `interval` = {"estimate", "low", "high", "n", "level"}):

    models        {role: "name/version" | null}                 roles: candidate, champion, sft, base
    metrics       {role: {metric: value}}                       point estimates (val_bpb, rouge_l_rag, ...)
    samples       [{question, reference, <role>, candidate_no_rag}]
    prompts       n held-out questions
    per_question  {"ids": [pair id],
                   "rouge_l_rag": {role: [ROUGE-L]}, "rouge_l_no_rag": {role: [ROUGE-L]},
                   "reward_margin": {other: [r(candidate) - r(other) | null: did not fit the reward model]}}
    per_text      {"bytes": [UTF-8 bytes + 1], "bits": {role: [bits]}}    val_bpb = sum(bits) / sum(bytes)
    intervals     {role: {"val_bpb", "rouge_l_rag", "rouge_l_no_rag", "rag_gain", "recall_at_<k>": interval}}
    comparisons   {"candidate_vs_<other>": {"rouge_l_rag_delta", "val_bpb_delta", "gold_win_rate",
                                            "reward_win_rate": interval},
                   "candidate_rag_vs_no_rag": {"rouge_l_delta": interval}}
    harness       {"scores": {role: {"<task>/<metric>": score}}, "tasks": {role: {task: facts}},
                   "seconds": {role: s}}     evaluate.harness on: lm-evaluation-harness scores with their
                                             standard errors (schema in harness.py)

Deltas are candidate minus other. The gold win rate is the share of questions where the candidate's answer has
the higher ROUGE-L against the reference (ties half): the simulated judges' criterion without their noise. The
reward win rate is the share of scored questions where the reward model prefers the candidate's answer.
`recall_at_<k>` intervals come from the rag_index stage's metrics when it records them (bootstrap.py names
the keys); `rag_gain` is the candidate's own gain from retrieval, paired over questions.

    evaluation |= interval_sections(evaluation, cfg.evaluate.intervals)
"""

from __future__ import annotations

from typing import Any

from lifecycle.config.evaluate import Intervals
from lifecycle.evaluate.bootstrap import Interval, from_flat_keys, interval, paired_delta, ratio, ratio_delta, win_rate

OTHERS = ("champion", "sft", "base")  # what the candidate is compared with, when measured


def model_intervals(evaluation: dict[str, Any], role: str, spec: Intervals) -> dict[str, Interval]:
    """One model's metrics with their intervals: bits per byte over texts, ROUGE-L and the gain from retrieval
    over questions."""
    kw = spec.model_dump()
    rag, no_rag = evaluation["per_question"]["rouge_l_rag"], evaluation["per_question"]["rouge_l_no_rag"]
    texts = evaluation["per_text"]
    found = {"val_bpb": ratio(texts["bits"][role], texts["bytes"], **kw), "rouge_l_rag": interval(rag[role], **kw)}
    if role in no_rag:
        found["rouge_l_no_rag"] = interval(no_rag[role], **kw)
        found["rag_gain"] = paired_delta(rag[role], no_rag[role], **kw)
    return found


def compare_with(evaluation: dict[str, Any], other: str, spec: Intervals) -> dict[str, Interval]:
    """The candidate against `other` on the same questions and texts."""
    kw = spec.model_dump()
    rag, texts = evaluation["per_question"]["rouge_l_rag"], evaluation["per_text"]
    found = {"rouge_l_rag_delta": paired_delta(rag["candidate"], rag[other], **kw),
             "val_bpb_delta": ratio_delta(texts["bits"]["candidate"], texts["bits"][other], texts["bytes"], **kw),
             "gold_win_rate": win_rate(rag["candidate"], rag[other], **kw)}
    margins = [m for m in evaluation["per_question"]["reward_margin"].get(other, []) if m is not None]
    if margins:
        found["reward_win_rate"] = win_rate(margins, [0.0] * len(margins), **kw)
    return found


def interval_sections(evaluation: dict[str, Any], spec: Intervals) -> dict[str, Any]:
    """{"intervals", "comparisons"} of an evaluation holding `metrics`, `per_question` and `per_text`."""
    intervals = {role: model_intervals(evaluation, role, spec) for role in evaluation["metrics"]}
    comparisons = {f"candidate_vs_{other}": compare_with(evaluation, other, spec) for other in OTHERS
                   if other in evaluation["metrics"]}
    if "rag_gain" in intervals["candidate"]:
        comparisons["candidate_rag_vs_no_rag"] = {"rouge_l_delta": intervals["candidate"]["rag_gain"]}
    return {"intervals": {role: {k: v.to_dict() for k, v in found.items()} for role, found in intervals.items()},
            "comparisons": {name: {k: v.to_dict() for k, v in found.items()} for name, found in comparisons.items()}}


def split_retrieval_metrics(metrics: dict[str, float], mode: str, level: float) -> tuple[dict[str, float],
                                                                                     dict[str, dict[str, Any]]]:
    """(recall@k and MRR of the search `mode`, without the mode prefix; the recall intervals among them): from a
    rag_index output's metrics, where `<mode>_recall_at_<k>_low/_high/_n` hold an interval (bootstrap.py)."""
    found = {k.removeprefix(f"{mode}_"): v for k, v in metrics.items()
             if k.startswith(f"{mode}_recall_at_") or k == f"{mode}_mrr"}
    names = [k for k in found if k.removeprefix("recall_at_").isdigit()]
    intervals = {name: iv.to_dict() for name in names if (iv := from_flat_keys(found, name, level)) is not None}
    return {k: v for k, v in found.items() if k in names or k == "mrr"}, intervals

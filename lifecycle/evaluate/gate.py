"""The promotion gate: configurable rules over the evaluation (conf/promote.yaml). With a champion, the
candidate is compared with it on the same held-out data; the rules against the SFT model and the absolute
minimums apply always (the minimums alone, with the SFT rules, when there is no champion yet). A rule whose
metric could not be measured (no reward model for a win rate, e.g. after DPO) is recorded as skipped, not
passed silently.

Each rule compares one value with its threshold: the estimate, or a bound of the metric's 95% interval
(evaluation.json `intervals` and `comparisons`, lifecycle/evaluate/compare.py), as `bounds` in
conf/promote.yaml says: `lower` for an at-least rule, `upper` for an at-most rule. A rule on a bound whose
interval was not recorded fails (the evaluation cannot show what the rule asks for).

Rules on lm-evaluation-harness scores (conf/promote.yaml `harness`, evaluation.json `harness`: harness.py)
compare a "<task>/<metric>" score with a minimum or maximum, or its drop against the champion's or the SFT
model's ("worse" by lm-eval's higher_is_better), on the estimate or on estimate ± z·stderr. A score the
candidate lacks (a misspelt metric) fails; a drop against a model not measured is skipped.

    decision = decide(cfg.promote, evaluation, alarm="none")
    decision.passed, [r.line() for r in decision.rules], decision.to_dict()   # decision.json
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from lifecycle import names
from lifecycle.config.evaluate import HarnessRules, PromoteConfig
from lifecycle.evaluate.harness import score_interval

_OPS = {"<=": operator.le, ">=": operator.ge}
_BOUND_KEY = {"lower": "low", "upper": "high"}


@dataclass(frozen=True)
class Rule:
    rule: str
    metric: str
    estimate: float | None  # None: not measured (the rule is skipped)
    threshold: float
    op: str  # "<=" or ">="
    detail: str
    bound: str  # which value is compared: "estimate", "lower" or "upper" (conf/promote.yaml bounds)
    interval: dict[str, Any] | None  # {"estimate", "low", "high", "n", "level"} when the evaluation has one
    required: bool = False  # not measured fails instead of being skipped (a harness score the candidate lacks)

    @property
    def value(self) -> float | None:
        """The value compared with the threshold; None when not measured or when its bound was not recorded."""
        if self.bound == "estimate" or self.estimate is None:
            return self.estimate
        return None if self.interval is None else float(self.interval[_BOUND_KEY[self.bound]])

    @property
    def passed(self) -> bool | None:
        if self.estimate is None:
            return False if self.required else None
        return False if self.value is None else _OPS[self.op](self.value, self.threshold)

    def line(self) -> str:
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[self.passed]
        shown = "n/a" if self.value is None else f"{self.value:.4f}"
        what = self.metric if self.bound == "estimate" else f"{self.metric} {self.bound} bound"
        return f"{verdict}: {self.rule}: {what} {shown} {self.op} {self.threshold:.4f} ({self.evidence()}{self.detail})"

    def evidence(self) -> str:
        """"estimate 0.5500, 95% [0.3500, 0.7500], n 48; " (or why the bound is missing); "" when not measured."""
        if self.estimate is None:
            return ""
        if self.interval is None:
            return "" if self.bound == "estimate" else f"estimate {self.estimate:.4f}, no interval recorded; "
        iv = self.interval
        return (f"estimate {self.estimate:.4f}, {100 * iv['level']:g}% [{iv['low']:.4f}, {iv['high']:.4f}], "
                f"n {iv['n']}; ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"value": self.value, "passed": self.passed}


@dataclass(frozen=True)
class Decision:
    candidate: str
    champion: str | None
    mode: str  # "champion" (compared with one) | "absolute" (no champion yet) | "manual"
    rules: list[Rule] = field(default_factory=list)
    reason: str = ""

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rules)

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if r.passed is False]

    def summary(self) -> str:
        if self.mode == "manual":
            return f"promoted by hand: {self.reason}"
        if self.passed:
            return f"promoted: every rule passed ({len(self.rules)} rules, {self.mode})"
        return "refused: " + "; ".join(r.line() for r in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "mode": self.mode, "candidate": self.candidate, "champion": self.champion,
                "reason": self.reason or self.summary(), "rules": [r.to_dict() for r in self.rules]}

    def tags(self) -> dict[str, str]:
        """The decision as version tags: the verdict, then one tag per rule."""
        out = {names.DECISION: "promoted" if self.passed else "refused", names.DECISION_MODE: self.mode,
               names.DECISION_REASON: (self.reason or self.summary())[:4000]}
        return out | {names.GATE + r.rule: r.line()[:4000] for r in self.rules}


def decide(cfg: PromoteConfig, evaluation: dict[str, Any], alarm: str) -> Decision:
    """Apply the rules to an evaluation (evaluation.json); `alarm` is the candidate's RLHF health alarm tag
    ("none" when healthy)."""
    floor, rel, sft, bounds = cfg.minimums, cfg.against_champion, cfg.against_sft, cfg.bounds
    metrics = evaluation["metrics"]
    champ = metrics.get("champion")

    def single(rule: str, metric: str, threshold: float, op: str, detail: str) -> Rule:
        iv = ((evaluation.get("intervals") or {}).get("candidate") or {}).get(metric)
        return Rule(rule, metric, metrics["candidate"].get(metric), threshold, op, detail, getattr(bounds, rule), iv)

    def versus(rule: str, other: str, metric: str, threshold: float, op: str, detail: str) -> Rule:
        iv = ((evaluation.get("comparisons") or {}).get(f"candidate_vs_{other}") or {}).get(metric)
        missing = ("no reward model in the candidate's lineage" if metric == "reward_win_rate" and other in metrics
                   else f"no {other} model")
        return Rule(rule, f"{metric}_vs_{other}", iv["estimate"] if iv else None, threshold, op,
                    detail if iv else f"{detail}: not measured ({missing})", getattr(bounds, rule), iv)

    rules = [
        single("max_bpb", "val_bpb", floor.max_bpb, "<=", "bits per byte on validation text"),
        single("min_rouge_l", "rouge_l_rag", floor.min_rouge_l, ">=",
               "ROUGE-L with retrieval against held-out references"),
        single("min_rag_gain", "rag_gain", floor.min_rag_gain, ">=", "ROUGE-L with retrieval minus without"),
        versus("min_gain_over_base", "base", "rouge_l_rag_delta", floor.min_gain_over_base, ">=",
               "ROUGE-L with retrieval minus the base model's"),
        single("min_recall", f"recall_at_{floor.recall_k}", floor.min_recall, ">=",
               "retrieval recall of the paired index"),
        versus("sft_gold_win_rate", "sft", "gold_win_rate", sft.min_gold_win_rate, ">=",
               "questions where the answer is closer to the reference than the SFT model's (ties half)"),
        versus("sft_rouge_l_drop", "sft", "rouge_l_rag_delta", -sft.max_rouge_l_drop, ">=",
               f"ROUGE-L with retrieval minus the SFT model's, at least -{sft.max_rouge_l_drop}"),
    ]
    if floor.no_rlhf_alarm:
        rules.append(Rule("no_rlhf_alarm", "rlhf_alarm", 0.0 if alarm in ("", "none") else 1.0, 0.0, "<=",
                          "RLHF health alarm: " + (alarm or "none"), "estimate", None))
    if champ is not None:
        rules += [
            versus("bpb_regression", "champion", "val_bpb_delta", rel.max_bpb_regression, "<=",
                   f"bits per byte minus the champion's ({champ['val_bpb']:.4f})"),
            versus("win_rate", "champion", "reward_win_rate", rel.min_win_rate, ">=",
                   "reward-model win rate against the champion (ties half)"),
            versus("gold_win_rate", "champion", "gold_win_rate", rel.min_gold_win_rate, ">=",
                   "questions where the answer is closer to the reference than the champion's (ties half)"),
            versus("rouge_l_drop", "champion", "rouge_l_rag_delta", -rel.max_rouge_l_drop, ">=",
                   f"ROUGE-L with retrieval minus the champion's ({champ['rouge_l_rag']:.4f}), "
                   f"at least -{rel.max_rouge_l_drop}"),
        ]
    rules += harness_rules(cfg.harness, evaluation) if cfg.harness else []
    rules += [human_rule(cfg, evaluation["human"])] if cfg.human and evaluation.get("human") else []
    models = evaluation["models"]
    return Decision(candidate=models["candidate"], champion=models.get("champion"),
                    mode="champion" if champ is not None else "absolute", rules=rules)


def human_rule(cfg: PromoteConfig, human: dict[str, Any]) -> Rule:
    """People's win rate in the human round (evaluation.json "human", when the round ran); a round that got no
    vote fails: it was asked for and shows nothing."""
    assert cfg.human is not None
    iv = human["win_rate"]
    detail = (f"batch {human['batch_id']} has no vote" if iv is None else
              f"people's choice against the {human['other']} {human['other_model']} ({human['mode']}, "
              f"{human['votes']} votes by {human['annotators']}, {human['identical']} identical answers as ties; "
              f"batch {human['batch_id']})")
    return Rule("human_win_rate", f"human_win_rate_vs_{human['other']}", iv["estimate"] if iv else None,
                cfg.human.min_win_rate, ">=", detail, cfg.bounds.human_win_rate, iv, required=True)


def harness_rules(cfg: HarnessRules, evaluation: dict[str, Any]) -> list[Rule]:
    """The rules on harness scores (rule `harness_<group>/<task>/<metric>`), in conf/promote.yaml's order."""
    scores = (evaluation.get("harness") or {}).get("scores") or {}
    ours = scores.get("candidate") or {}
    rules = []

    def bound(op: str) -> str:
        return "estimate" if cfg.bound == "estimate" else "lower" if op == ">=" else "upper"

    def missing(key: str) -> str:
        task = key.partition("/")[0]
        measured = sorted(k.partition("/")[2] for k in ours if k.partition("/")[0] == task)
        return f"not measured: the candidate has no score {key} (its {task} scores: {', '.join(measured) or 'none'})"

    for group, op in (("minimums", ">="), ("maximums", "<=")):
        for key, threshold in getattr(cfg, group).items():
            score = ours.get(key)
            rules.append(Rule(f"harness_{group.removesuffix('s')}/{key}", f"harness/{key}",
                              score["value"] if score else None, threshold, op,
                              "lm-evaluation-harness score" if score else missing(key), bound(op),
                              score["interval"] if score else None, required=True))
    for other in ("champion", "sft"):
        for key, allowed in getattr(cfg, f"max_drop_vs_{other}").items():
            rules.append(harness_drop(key, allowed, ours.get(key), (scores.get(other) or {}).get(key), other,
                                      cfg.bound, missing(key)))
    return rules


def harness_drop(key: str, allowed: float, ours: dict[str, Any] | None, theirs: dict[str, Any] | None, other: str,
                 bound: str, missing: str) -> Rule:
    """Candidate minus `other` on one harness score: at least -allowed (higher is better) or at most +allowed;
    its interval from the two standard errors as if independent (the same examples make them correlated, so the
    interval is wider than a paired one: conservative)."""
    up = ours is None or ours["higher_is_better"] is not False
    op, threshold = (">=", -allowed) if up else ("<=", allowed)
    rule, metric = f"harness_drop_vs_{other}/{key}", f"harness/{key}_delta_vs_{other}"
    chosen = "estimate" if bound == "estimate" else "lower" if up else "upper"
    if ours is None or theirs is None:
        why = missing if ours is None else f"not measured (no {other} model)"
        return Rule(rule, metric, None, threshold, op, why, chosen, None, required=ours is None)
    delta = ours["value"] - theirs["value"]
    iv = None
    if ours["interval"] and ours["stderr"] is not None and theirs["stderr"] is not None:
        iv = score_interval(delta, math.hypot(ours["stderr"], theirs["stderr"]), ours["interval"]["n"],
                            ours["interval"]["level"])
    detail = f"{'higher' if up else 'lower'} is better; {other}'s {theirs['value']:.4f}, at most {allowed} worse"
    return Rule(rule, metric, delta, threshold, op, detail, chosen, iv)

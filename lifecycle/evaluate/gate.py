"""The promotion gate: configurable rules over the evaluation (conf/promote.yaml). With a champion, the
candidate is compared with it on the same held-out data; the absolute minimums apply always (and alone
when there is no champion yet). A rule whose metric could not be measured (no reward model for a win
rate, e.g. after DPO) is recorded as skipped, not passed silently.

    decision = decide(cfg.promote, evaluation, alarm="none")
    decision.passed, [r.line() for r in decision.rules], decision.to_dict()   # decision.json
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from lifecycle.config import PromoteConfig

_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Rule:
    rule: str
    metric: str
    value: float | None  # None: not measured (the rule is skipped)
    threshold: float
    op: str  # "<=" or ">="
    detail: str

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else _OPS[self.op](self.value, self.threshold)

    def line(self) -> str:
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[self.passed]
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        return f"{verdict}: {self.rule}: {self.metric} {value} {self.op} {self.threshold:.4f} ({self.detail})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


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
        out = {"lifecycle.decision": "promoted" if self.passed else "refused", "lifecycle.decision.mode": self.mode,
               "lifecycle.decision.reason": (self.reason or self.summary())[:4000]}
        return out | {f"lifecycle.gate.{r.rule}": r.line()[:4000] for r in self.rules}


def decide(cfg: PromoteConfig, evaluation: dict[str, Any], alarm: str) -> Decision:
    """Apply the rules to an evaluation (evaluation.json); `alarm` is the candidate's RLHF health alarm tag
    ("none" when healthy)."""
    metrics = evaluation["metrics"]
    cand, champ = metrics["candidate"], metrics.get("champion")
    floor, rel = cfg.minimums, cfg.against_champion
    recall = cand.get(f"recall_at_{floor.recall_k}")
    base = metrics.get("base", {}).get("rouge_l_rag")
    over_base = cand["rouge_l_rag"] - base if base is not None and "rouge_l_rag" in cand else None
    rules = [
        Rule("max_bpb", "val_bpb", cand.get("val_bpb"), floor.max_bpb, "<=", "bits per byte on validation text"),
        Rule("min_rouge_l", "rouge_l_rag", cand.get("rouge_l_rag"), floor.min_rouge_l, ">=",
             "ROUGE-L with retrieval against held-out references"),
        Rule("min_rag_gain", "rag_gain", cand.get("rag_gain"), floor.min_rag_gain, ">=",
             "ROUGE-L with retrieval minus without"),
        Rule("min_gain_over_base", "rouge_l_gain_over_base", over_base, floor.min_gain_over_base, ">=",
             "ROUGE-L with retrieval minus the base model's" + (f" ({base:.4f})" if base is not None
                                                                else ": not measured")),
        Rule("min_recall", f"recall_at_{floor.recall_k}", recall, floor.min_recall, ">=",
             "retrieval recall of the paired index"),
    ]
    if floor.no_rlhf_alarm:
        rules.append(Rule("no_rlhf_alarm", "rlhf_alarm", 0.0 if alarm in ("", "none") else 1.0, 0.0, "<=",
                          "RLHF health alarm: " + (alarm or "none")))
    if champ is not None:
        rules += [
            Rule("bpb_regression", "val_bpb", cand.get("val_bpb"), champ["val_bpb"] + rel.max_bpb_regression, "<=",
                 f"champion {champ['val_bpb']:.4f} + {rel.max_bpb_regression}"),
            Rule("win_rate", "win_rate_vs_champion", cand.get("win_rate_vs_champion"), rel.min_win_rate, ">=",
                 "reward-model win rate against the champion" if "win_rate_vs_champion" in cand
                 else "no reward model in the candidate's lineage"),
            Rule("rouge_l_drop", "rouge_l_rag", cand.get("rouge_l_rag"), champ["rouge_l_rag"] - rel.max_rouge_l_drop,
                 ">=", f"champion {champ['rouge_l_rag']:.4f} - {rel.max_rouge_l_drop}"),
        ]
    models = evaluation["models"]
    return Decision(candidate=models["candidate"], champion=models.get("champion"),
                    mode="champion" if champ is not None else "absolute", rules=rules)

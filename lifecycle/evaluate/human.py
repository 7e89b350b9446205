"""The human evaluation round: the candidate's answers against another model's (the champion's, or the SFT
model's when there is no champion) to the same held-out questions, put blind into the annotation app as a
pairwise batch `eval-<candidate>-vs-<other>`, and the share of questions where people prefer the candidate.

- Blind: each item holds the two answers in a canonical order drawn by a hash of the batch and the question
  (`candidate_is` in the item's meta says which side is the candidate's); the app shows them to each annotator
  in an order of its own, recorded with every vote (`left`).
- Identical answers are not asked: they are ties (½). A question whose pair has no vote yet is left out.
- The batch's source is `evaluation`: the preferences stage exports its own batch and the chat page's feedback,
  never these votes (tests/integration/test_human_evaluation.py checks the exported set).

    items, identical = round_items(batch_id, questions, prompts, candidate_answers, other_answers)
    found = human_result(store, plan, intervals)       # evaluation.json "human"; found["win_rate"]: an interval
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.config.evaluate import Intervals
from lifecycle.evaluate.bootstrap import interval
from lifecycle.preferences.stats import batch_stats
from lifecycle.preferences.store import EVALUATION, Message, NewItem, PreferenceStore

if TYPE_CHECKING:
    from lifecycle.align.sft_data import Pair

SOURCE = EVALUATION  # the batches' source in the preference store
SCORE = {"candidate": 1.0, "other": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class RoundPlan:
    """What the round asked: handed from the publishing task to the evaluate task."""

    batch_id: str
    mode: str  # human | simulated
    other: str  # the role compared with: "champion" | "sft"
    candidate_model: str
    other_model: str
    questions: tuple[str, ...]  # the ids of the held-out questions answered by both
    identical: tuple[str, ...]  # those whose two answers were the same: ties, not asked
    items: int  # pairs put to the annotators

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_id_for(candidate: str, other: str, round_: int) -> str:
    """`eval-<candidate>-vs-<other>` ("name/3" reads "name-v3"), `-r<round>` from round 2; at most 64 characters
    (a longer one keeps its start and a hash of the whole)."""
    def slug(ref: str) -> str:
        return ref.replace("/", "-v")

    name = f"eval-{slug(candidate)}-vs-{slug(other)}" + (f"-r{round_}" if round_ > 1 else "")
    return name if len(name) <= 64 else f"{name[:47]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def candidate_first(batch_id: str, question_id: str) -> bool:
    return hashlib.sha256(f"{batch_id}:{question_id}".encode()).digest()[0] % 2 == 0


def round_items(batch_id: str, questions: list[Pair], prompts: list[list[Message]], ours: list[str],
                theirs: list[str]) -> tuple[list[NewItem], list[str]]:
    """(the items to vote on, the ids of the questions whose two answers were identical)."""
    items, identical = [], []
    for pair, prompt, mine, other in zip(questions, prompts, ours, theirs, strict=True):
        if mine.strip() == other.strip():
            identical.append(pair.id)
            continue
        first = candidate_first(batch_id, pair.id)
        a, b = (mine, other) if first else (other, mine)
        items.append(NewItem(tuple(prompt), a, b, meta={"question": pair.id, "candidate_is": "a" if first else "b",
                                                        "reference": pair.answer}))
    return items, identical


def human_result(store: PreferenceStore | None, plan: RoundPlan, spec: Intervals) -> dict[str, Any]:
    """evaluation.json's "human": the plan, the votes, and the win rate (an interval over the questions with a
    verdict; None when no question has one). `store` may be None when nothing was asked (every answer the same)."""
    scores: dict[str, list[float]] = {}
    stats = None
    if store is not None and plan.items:
        sides = {item.id: json.loads(item.meta) for item in store.items(plan.batch_id) if item.gold is None}
        judgements = store.judgements(plan.batch_id)
        for j in judgements:
            meta = sides.get(j.item_id)
            if meta is None:
                continue
            winner = "tie" if j.choice == "tie" else "candidate" if j.choice == meta["candidate_is"] else "other"
            scores.setdefault(meta["question"], []).append(SCORE[winner])
        stats = batch_stats(judgements)
    per_question = {q: 0.5 for q in plan.identical} | {q: sum(v) / len(v) for q, v in scores.items()}
    ordered = [per_question[q] for q in plan.questions if q in per_question]
    found = interval(ordered, **spec.model_dump()).to_dict() if ordered else None
    return plan.to_dict() | {
        "questions": len(plan.questions), "identical": len(plan.identical), "voted": len(scores),
        "votes": sum(len(v) for v in scores.values()), "annotators": stats.annotators if stats else 0,
        "agreement": stats.krippendorff_alpha if stats else None, "left_wins": stats.position_bias if stats else None,
        "per_question": per_question, "win_rate": found}

"""Moving `@champion`: by the gate's decision (tasks/promote.py), by hand (`lifecycle promote VERSION
--reason TEXT`) or back (`lifecycle rollback`). Every move happens under the promotion lock, re-reads the
champion inside it, records the champion it replaced on the new one, and leaves a decision record: tags on
the version and an MLflow run (tag `lifecycle.stage=promote`) holding decision.json.

    champion_before("lifecycle-gpt", candidate)      # the champion a candidate is (or was) measured against
    promote_by_hand(state_dir, cfg, "lifecycle-gpt/7", reason="hotfix for ...")
    promote_from_canary(cfg, state_dir)               # @challenger, if its live numbers pass promote.canary
    rollback(state_dir, cfg, reason="answers got worse")
    model_table(list_versions("lifecycle-gpt"))       # `lifecycle models`
"""

from __future__ import annotations

import getpass
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifecycle import names
from lifecycle.config import Config
from lifecycle.config.evaluate import CanaryRules
from lifecycle.errors import LifecycleError
from lifecycle.evaluate.bootstrap import wilson
from lifecycle.evaluate.gate import Decision
from lifecycle.preferences.feedback import VersionFeedback
from lifecycle.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ModelRef,
    get_alias,
    move_champion,
    promotion_lock,
    resolve,
    rollback_champion,
    tag_version,
    version_tags,
)


def lock_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "locks"


def champion_before(name: str, candidate: ModelRef | None) -> ModelRef | None:
    """The champion `candidate` is compared with: `name@champion`, or, when the candidate already is the
    champion (promoted by an earlier run), the one it replaced. So a re-run after a promotion finds the same
    evaluation in the cache instead of comparing the champion with itself."""
    current = get_alias(name, CHAMPION)
    if current is None or candidate is None or current != candidate:
        return current
    previous = version_tags(current).get(PREVIOUS, "none")
    return None if previous == "none" else resolve(previous)


def apply_decision(state_dir: Path, decision: Decision, candidate: ModelRef, expected: ModelRef | None,
                   extra_tags: dict[str, str]) -> ModelRef | None:
    """Tag the candidate with the decision and, on a pass, make it the champion; returns the champion after.
    Refuses (LifecycleError) when the champion moved since the evaluation compared against `expected`."""
    with promotion_lock(lock_dir(state_dir), candidate.name):
        current = get_alias(candidate.name, CHAMPION)
        if current not in (expected, candidate):
            raise LifecycleError(f"promote: the champion moved from {expected or 'none'} to {current} since this "
                                 f"evaluation of {candidate}; re-run the pipeline to evaluate against {current}")
        tags = decision.tags() | extra_tags
        if decision.passed and current != candidate:
            rag = version_tags(candidate).get(names.RAG_INDEX_VERSION)
            move_champion(candidate, tags | ({names.CHAMPION_RAG_INDEX_VERSION: rag} if rag else {}))
            return candidate
        if current != candidate:
            tag_version(candidate, tags)
        return current


def record(cfg: Config, state_dir: Path, name: str, record: dict[str, Any], tags: dict[str, str]) -> str:
    """An MLflow run holding a hand-made decision (decision.json): the audit trail outside any pipeline."""
    import mlflow

    from lifecycle.tracking import setup_mlflow

    experiment_id = setup_mlflow(Path(state_dir), cfg.run.experiment)
    with mlflow.start_run(run_name=name, experiment_id=experiment_id,
                          tags={names.STAGE: "promote", names.MANUAL: "true"} | tags) as run:
        mlflow.log_dict(record, "promote/decision.json")
    return run.info.run_id


def promote_by_hand(cfg: Config, state_dir: Path, spec: str, reason: str) -> dict[str, Any]:
    """Make `spec` (VERSION, NAME/VERSION or NAME@ALIAS) the champion, bypassing the gate, on the record."""
    if not reason.strip():
        raise LifecycleError("promote: --reason is required (it is recorded with the version)")
    name = cfg.run.models.chat
    ref = resolve(f"{name}/{spec}" if spec.isdigit() else spec)
    who, when = getpass.getuser(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with promotion_lock(lock_dir(state_dir), ref.name):
        before = get_alias(ref.name, CHAMPION)
        if before == ref:
            raise LifecycleError(f"promote: {ref} already is @{CHAMPION}")
        decision = {"passed": True, "mode": "manual", "candidate": str(ref), "champion": str(before or "none"),
                    "reason": reason, "by": who, "at": when, "rules": []}
        run_id = record(cfg, state_dir, f"promote-{ref.name}-{ref.version}-by-hand", decision,
                        {names.DECISION: "promoted by hand", names.MODEL: str(ref)})
        move_champion(ref, {names.DECISION: "promoted by hand", names.DECISION_MODE: "manual",
                            names.DECISION_REASON: reason[:4000], names.DECISION_BY: who,
                            names.DECISION_RUN_ID: run_id})
    return decision | {"run_id": run_id}


def live_numbers(cfg: Config, state_dir: Path, versions: list[str]) -> dict[str, dict[str, Any]]:
    """Per version: answers served (its traces in the run's experiment), thumbs up/down and compare results
    against each other version (the preference store's chat feedback)."""
    from lifecycle.preferences.db import store_url
    from lifecycle.preferences.feedback import feedback_by_version
    from lifecycle.preferences.store import PreferenceStore
    from lifecycle.serve.tracing import answers_by_version
    from lifecycle.tracking import setup_mlflow

    answers = answers_by_version(setup_mlflow(Path(state_dir), cfg.run.experiment), versions)
    feedback = feedback_by_version(PreferenceStore.open(store_url(cfg.annotate.store_url, state_dir)),
                                   cfg.run.models.chat)
    return {v: {"answers": answers[v], "feedback": feedback.get(v)} for v in versions}


def canary_rules(rules: CanaryRules, challenger: dict[str, Any], champion: dict[str, Any],
                 champion_version: str) -> list[dict[str, Any]]:
    """Each rule of promote.canary on the two versions' live numbers: value, threshold, passed (None: skipped,
    as max_thumbs_up_drop is until both versions have min_ratings thumbs)."""
    mine, theirs = challenger["feedback"] or VersionFeedback(), champion["feedback"] or VersionFeedback()
    votes = mine.against(champion_version)
    n = sum(votes.values())
    wins = wilson(votes["won"] + votes["tie"] / 2, n)
    rated = min(mine.up + mine.down, theirs.up + theirs.down)
    drop = (theirs.up / (theirs.up + theirs.down) - mine.up / (mine.up + mine.down)) if rated else None

    def rule(name: str, value: float | None, op: str, threshold: float, detail: str,
             skip: bool = False) -> dict[str, Any]:
        if skip:
            passed = None
        else:  # a value that cannot be measured (no votes, no interval) fails its rule
            passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        return {"rule": name, "value": value, "op": op, "threshold": threshold, "passed": passed, "detail": detail}

    return [rule("min_answers", challenger["answers"], ">=", rules.min_answers, "requests it answered"),
            rule("min_compare_votes", n, ">=", rules.min_compare_votes, f"compare votes against {champion_version}"),
            rule("min_win_rate", wins["low"], ">=", rules.min_win_rate,
                 f"lower bound of its compare win rate {number(wins['estimate'])} [{number(wins['low'])}, "
                 f"{number(wins['high'])}], n {n}"),
            rule("max_thumbs_up_drop", drop, "<=", rules.max_thumbs_up_drop,
                 f"the champion's thumbs-up share minus its own ({rated} ratings on the less rated)",
                 skip=rated < rules.min_ratings)]


def promote_from_canary(cfg: Config, state_dir: Path) -> dict[str, Any]:
    """Make @challenger the champion when its live numbers pass promote.canary; the decision, passed or not, is
    recorded as the gate's are (tags on the challenger, decision.json in an MLflow run)."""
    name = cfg.run.models.chat
    who, when = getpass.getuser(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with promotion_lock(lock_dir(state_dir), name):
        challenger, champion = get_alias(name, CHALLENGER), get_alias(name, CHAMPION)
        if challenger is None or champion is None or challenger == champion:
            raise LifecycleError(f"promote --from-canary: needs {name}@{CHALLENGER} and {name}@{CHAMPION} on two "
                                 f"versions (they are {challenger or 'none'} and {champion or 'none'})")
        live = live_numbers(cfg, state_dir, [str(challenger), str(champion)])
        rules = canary_rules(cfg.promote.canary, live[str(challenger)], live[str(champion)], str(champion))
        passed = all(r["passed"] is not False for r in rules)
        verdict = "promoted (canary)" if passed else "refused (canary)"
        decision = {"passed": passed, "mode": "canary", "candidate": str(challenger), "champion": str(champion),
                    "by": who, "at": when, "rules": rules,
                    "live": {v: {"answers": n["answers"], "feedback": asdict(n["feedback"]) if n["feedback"] else None}
                             for v, n in live.items()}}
        run_id = record(cfg, state_dir, f"promote-{name}-{challenger.version}-from-canary", decision,
                        {names.DECISION: verdict, names.MODEL: str(challenger)})
        tags = {names.DECISION: verdict, names.DECISION_MODE: "canary", names.DECISION_BY: who,
                names.DECISION_RUN_ID: run_id,
                names.DECISION_REASON: "; ".join(f"{r['rule']} {r['value']} {r['op']} {r['threshold']}"
                                                 for r in rules if r["passed"] is False)[:4000]}
        if passed:
            move_champion(challenger, tags)
        else:
            tag_version(challenger, tags)
    return decision | {"run_id": run_id}


def rollback(cfg: Config, state_dir: Path, reason: str) -> dict[str, Any]:
    """Restore the champion the current one replaced, on the record."""
    name = cfg.run.models.chat
    who, when = getpass.getuser(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with promotion_lock(lock_dir(state_dir), name):
        rolled, restored = rollback_champion(name, {names.DECISION: "rolled back",
                                                    names.DECISION_REASON: (reason or "rollback")[:4000],
                                                    names.DECISION_BY: who})
        decision = {"mode": "rollback", "rolled_back": str(rolled), "champion": str(restored), "reason": reason,
                    "by": who, "at": when}
        decision["run_id"] = record(cfg, state_dir, f"rollback-{name}-{rolled.version}", decision,
                                    {names.DECISION: "rolled back", names.MODEL: str(rolled)})
    return decision


def live_table(live: dict[str, dict[str, Any]]) -> str:
    """`lifecycle models --live`: what serving saw of each version, with 95% intervals."""
    lines = [f"{'live':>20}  {'answers':>7}  {'thumbs up':<26} compare wins (ties half)"]
    for version, numbers in live.items():
        fb = numbers["feedback"] or VersionFeedback()
        tally = [fb.against(other) for other in live if other != version]
        won, lost, tie = (sum(t[k] for t in tally) for k in ("won", "lost", "tie"))
        lines.append(f"{version:>20}  {numbers['answers']:>7}  {_share(wilson(fb.up, fb.up + fb.down)):<26} "
                     f"{_share(wilson(won + tie / 2, won + lost + tie))}")
    return "\n".join(lines)


def number(value: float | None) -> str:
    """A measured value as decisions print it: 3 decimals, "-" when not measured."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _share(found: dict[str, float | None]) -> str:
    if not found["n"]:
        return "-"
    return f"{found['estimate']:.2f} [{found['low']:.2f}, {found['high']:.2f}] n={found['n']}"


def model_table(versions: list[dict[str, Any]]) -> str:
    """`lifecycle models`: one line per version with its aliases, stage, decision and key measurements."""
    lines = [f"{'version':>7}  {'aliases':<34} {'stage':<6} {'decision':<18} {'rouge_l':>7} {'bpb':>6}  reason"]
    for v in versions:
        tags = v["tags"]
        lines.append(f"{v['version']:>7}  {','.join('@' + a for a in v['aliases']) or '-':<34} "
                     f"{tags.get(names.STAGE, '?'):<6} {tags.get(names.DECISION, '-'):<18} "
                     f"{tags.get(names.EVAL + 'rouge_l_rag', '-'):>7} {tags.get(names.EVAL + 'val_bpb', '-'):>6}  "
                     f"{tags.get(names.DECISION_REASON, '')[:90]}")
    return "\n".join(lines)

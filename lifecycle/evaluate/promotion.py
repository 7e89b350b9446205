"""Moving `@champion`: by the gate's decision (tasks/promote.py), by hand (`lifecycle promote VERSION
--reason TEXT`) or back (`lifecycle rollback`). Every move happens under the promotion lock, re-reads the
champion inside it, records the champion it replaced on the new one, and leaves a decision record: tags on
the version and an MLflow run (tag `lifecycle.stage=promote`) holding decision.json.

    champion_before("lifecycle-gpt", candidate)      # the champion a candidate is (or was) measured against
    promote_by_hand(state_dir, cfg, "lifecycle-gpt/7", reason="hotfix for ...")
    rollback(state_dir, cfg, reason="answers got worse")
    model_table(list_versions("lifecycle-gpt"))       # `lifecycle models`
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Any

from lifecycle import names
from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.evaluate.gate import Decision
from lifecycle.registry import (
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

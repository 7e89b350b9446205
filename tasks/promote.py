"""The promote stage: the gate (lifecycle/evaluate/gate.py) over the evaluate stage's result. The candidate
becomes @champion only when every rule passes; the decision (each rule, value, threshold, verdict) is
decision.json on this stage's MLflow run, tags on the version and a Prefect artifact. Cached like every
stage: the same evaluation under the same rules is decided once (a later hand rollback is respected)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.evaluate import read_evaluation
from lifecycle.evaluate.gate import Decision, decide
from lifecycle.registry import ModelRef, resolve, version_tags
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="promote", cache_policy=NO_CACHE, **STAGE_RETRIES)
def promote(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    cfg, logger, evaluation = ctx.cfg, get_run_logger(), inputs["evaluate"]

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.evaluate.promotion import apply_decision
        from lifecycle.evaluate.report import build_report, report_markdown_for_prefect

        found = read_evaluation(evaluation.path)
        candidate = resolve(found["models"]["candidate"])
        expected = resolve(found["models"]["champion"]) if found["models"].get("champion") else None
        decision = decide(cfg.promote, found, version_tags(candidate).get(names.RLHF_ALARM, "none"))
        run_id = mlflow.active_run().info.run_id
        record = decision.to_dict() | {"evaluation_run_id": evaluation.run_id, "promote_run_id": run_id,
                                       "rag_index_version": version_tags(candidate).get(names.RAG_INDEX_VERSION)}
        (dirs.out / "decision.json").write_text(json.dumps(record, indent=2))
        champion = apply_decision(Path(ctx.state_dir), decision, candidate, expected,
                                  {names.DECISION_RUN_ID: run_id})
        mlflow.log_dict(record, "promote/decision.json")
        markdown = decision_markdown(decision, str(champion) if champion else "none")
        mlflow.log_text(markdown, "promote/decision.md")
        create_markdown_artifact(key="promotion-decision", markdown=markdown, description=decision.summary()[:500])
        card = build_report(ctx.parent_run_id, found, dirs.out / "report", cfg.evaluate.prices, cfg.evaluate.currency,
                            decision=record)  # the report card again, now with the decision and every stage's cost
        mlflow.log_artifacts(str(dirs.out / "report"), "promote/report")
        create_markdown_artifact(key="report-card", markdown=report_markdown_for_prefect(card),
                                 description=f"{candidate}: {decision.summary()[:200]}")
        if decision.passed and expected != candidate:
            announce_champion(candidate, expected)
        log = logger.info if decision.passed else logger.warning
        log("promote: %s: %s", candidate, decision.summary())
        return StageResult({"passed": float(decision.passed), "rules": len(decision.rules),
                            "failed_rules": len(decision.failed)},
                           tags={names.DECISION: "promoted" if decision.passed else "refused",
                                 names.CANDIDATE: str(candidate), names.CHAMPION: str(champion)})

    return run_stage(STAGE, ctx, inputs, work)


def decision_markdown(decision: Decision, champion: str) -> str:
    lines = [f"# Promotion decision: {decision.candidate}", "",
             f"**{'PROMOTED' if decision.passed else 'REFUSED'}** ({decision.mode}; compared with "
             f"{decision.champion or 'no champion'}). @champion is now {champion}.", "",
             "| rule | metric | compared | value | threshold | verdict | interval |", "|---|---|---|---:|---:|---|---|"]
    for r in decision.rules:
        value = "n/a" if r.value is None else f"{r.value:.4f}"
        verdict = {True: "pass", False: "**FAIL**", None: "skipped"}[r.passed]
        iv = r.interval
        shown = "—" if iv is None else f"{iv['estimate']:.4f} [{iv['low']:.4f}, {iv['high']:.4f}], n {iv['n']}"
        lines.append(f"| {r.rule} | {r.metric} | {r.bound} | {value} | {r.op} {r.threshold:.4f} | {verdict} | "
                     f"{shown} |")
    return "\n".join(lines + ["", *(f"- {r.rule}: {r.detail}" for r in decision.rules)])


def announce_champion(champion: ModelRef, previous: ModelRef | None) -> None:
    """The event infra/prefect.yaml's RAG rebuild check is triggered by: a new champion."""
    from prefect.events import emit_event

    emit_event(event=names.CHAMPION_PROMOTED, resource={"prefect.resource.id": f"{names.MODEL_RESOURCE}.{champion.name}",
                                               names.MODEL: str(champion)},
               payload={"champion": str(champion), "previous": str(previous) if previous else None})


STAGE = Stage("promote", __name__, inputs=("evaluate",), run=promote,
              produces="the gate's decision (each rule, value, threshold, verdict); @champion moves only on a pass")

"""validate task: the Great Expectations suite over the ingested documents; stops the pipeline on failure."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle.errors import ValidationFailed
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="validate", cache_policy=NO_CACHE, **STAGE_RETRIES)
def validate(ctx: RunContext, docs: StageOutput) -> StageOutput:
    section = ctx.cfg.validate_

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.data.validate import describe_failures, validate_documents

        out = dirs.out
        stats = json.loads(docs.file("stats.json").read_text())
        report = validate_documents(section, Path(docs.path), stats, out)
        mlflow.log_artifacts(str(out / "data_docs"), "data_docs")
        mlflow.log_artifact(str(out / "result.json"), "validation")
        create_markdown_artifact(key="validation-report", markdown=report_markdown(report),
                                 description="Great Expectations results for the ingested documents")
        if report["success"]:  # a failed run's docs live only in MLflow: its folder is not kept
            index = ctx.store.path("validate", dirs.key) / "data_docs" / "index.html"
            create_link_artifact(key="data-docs", link=index.as_uri(), link_text="Great Expectations Data Docs")
        mlflow.set_tag("lifecycle.validation", "passed" if report["success"] else "failed")
        if not report["success"]:
            raise ValidationFailed(describe_failures(report))
        return StageResult({"expectations": report["evaluated"], "passed": report["passed"]})

    return run_stage("validate", ctx, {"ingest": docs}, work)


def report_markdown(report: dict) -> str:
    lines = [f"# Data validation: {'passed' if report['success'] else 'FAILED'}",
             f"{report['passed']} of {report['evaluated']} expectations met.", "",
             "| suite | expectation | column | observed | ok |", "|---|---|---|---|---|"]
    for row in report["expectations"]:
        observed = json.dumps(row["observed"], default=str)[:80].replace("|", "\\|")
        lines.append(f"| {row['suite']} | {row['expectation']} | {row['kwargs'].get('column', '')} | "
                     f"{observed} | {'yes' if row['success'] else '**no**'} |")
    return "\n".join(lines)

"""The validate stage: the Great Expectations suite over the ingested documents; stops the pipeline on failure."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle.errors import ValidationFailed
from lifecycle.names import VALIDATION, VALIDATION_KEY
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="validate", cache_policy=NO_CACHE, **STAGE_RETRIES)
def validate(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    section, docs = ctx.cfg.validate_, inputs["ingest"]

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
        mlflow.set_tag(VALIDATION, "passed" if report["success"] else "failed")
        if not report["success"]:
            raise ValidationFailed(describe_failures(report))
        return StageResult({"expectations": report["evaluated"], "passed": report["passed"]})

    return run_stage(STAGE, ctx, inputs, work)


def report_markdown(report: dict) -> str:
    lines = [f"# Data validation: {'passed' if report['success'] else 'FAILED'}",
             f"{report['passed']} of {report['evaluated']} expectations met.", "",
             "| suite | expectation | column | observed | ok |", "|---|---|---|---|---|"]
    for row in report["expectations"]:
        observed = json.dumps(row["observed"], default=str)[:80].replace("|", "\\|")
        lines.append(f"| {row['suite']} | {row['expectation']} | {row['kwargs'].get('column', '')} | "
                     f"{observed} | {'yes' if row['success'] else '**no**'} |")
    return "\n".join(lines)


def lineage(output: StageOutput) -> dict[str, str]:
    """A stored validate output passed (a failure stops the pipeline before it is stored)."""
    found = output.metrics
    return {VALIDATION_KEY: output.identity,
            VALIDATION: f"passed {found.get('passed', 0):.0f}/{found.get('expectations', 0):.0f}"}


STAGE = Stage("validate", __name__, inputs=("ingest",), run=validate, lineage=lineage,
              produces="the Great Expectations result and Data Docs; a failure stops the pipeline")

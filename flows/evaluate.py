"""The evaluate stage as a flow: a subflow of the pipeline, or run alone on the cached outputs it reads
(the candidate is the rlhf output's policy, by reference; the champion comes from the registry)."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.evaluate import evaluate


@flow(name="evaluate", flow_run_name="evaluate")
def evaluate_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                  ingest: StageOutput | None = None, pretrain: StageOutput | None = None,
                  sft: StageOutput | None = None, rlhf: StageOutput | None = None,
                  rag_index: StageOutput | None = None) -> StageOutput:
    given = {"ingest": ingest, "pretrain": pretrain, "sft": sft, "rlhf": rlhf, "rag_index": rag_index}
    with stage_scope("evaluate", ctx, settings, given) as (ctx, inputs):
        return evaluate(ctx, inputs["ingest"], inputs["pretrain"], inputs["sft"], inputs["rlhf"], inputs["rag_index"])

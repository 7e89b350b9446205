"""The rag_index stage as a flow: a subflow of the pipeline (paired with the run's chat model), or run
alone on the cached ingest output: a nightly RAG rebuild, paired with `model` when one is named
(a registry reference such as "lifecycle-gpt@champion")."""

from prefect import flow

from lifecycle.registry import ModelRef, resolve
from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.rag_index import rag_index


@flow(name="rag_index", flow_run_name="rag_index")
def rag_index_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                   ingest: StageOutput | None = None, model: ModelRef | str | None = None) -> StageOutput:
    with stage_scope("rag_index", ctx, settings, {"ingest": ingest}) as (ctx, inputs):
        return rag_index(ctx, inputs["ingest"], resolve(model) if isinstance(model, str) else model)

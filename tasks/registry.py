"""Registry steps of the pipeline that are not stages: the run's final model becomes `@candidate` and
`@challenger`, tagged with its full lineage, before the evaluate stage measures it."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lifecycle.registry import CANDIDATE, CHALLENGER, ModelRef, set_alias, tag_version, version_tags
from lifecycle.store import StageOutput
from tasks.common import RunContext
from tasks.retries import STAGE_RETRIES

# stage output -> the version tag naming it (the rlhf and rag_index stages tag the rest themselves)
LINEAGE = {"ingest": "lifecycle.data_key", "validate": "lifecycle.validation_key",
           "tokenize": "lifecycle.tokenizer_key", "preferences": "lifecycle.preference_set_hash"}


@task(name="mark-challenger", cache_policy=NO_CACHE, **STAGE_RETRIES)
def mark_challenger(ctx: RunContext, model: ModelRef, out: dict[str, StageOutput]) -> ModelRef:
    """Point `<name>@candidate` and `@challenger` at the model this run produced (by reference), with its
    lineage: data, validation result, tokenizer, preference set, reward model and RAG index (tagged by their
    stages), the pipeline's config hash and git commit, and the run it came from."""
    tags = {tag: out[stage].identity for stage, tag in LINEAGE.items() if stage in out}
    if "validate" in out:  # a stored validate output passed (a failure stops the pipeline before it is stored)
        found = out["validate"].metrics
        tags["lifecycle.validation"] = f"passed {found.get('passed', 0):.0f}/{found.get('expectations', 0):.0f}"
    tags |= {"lifecycle.pipeline_config_hash": ctx.config_hash, "mlflow.source.git.commit": ctx.git_commit,
             "lifecycle.pipeline_run_id": ctx.parent_run_id, "prefect.flow_run_id": ctx.flow_run_id}
    tag_version(model, tags)
    for alias in (CANDIDATE, CHALLENGER):
        set_alias(model, alias)
    MlflowClient().set_tag(ctx.parent_run_id, "lifecycle.candidate", str(model))
    lineage = version_tags(model)
    get_run_logger().info("%s is now %s@%s and @%s (data %s, tokenizer %s, preferences %s, reward model %s, "
                          "RAG index version %s)", model, model.name, CANDIDATE, CHALLENGER,
                          lineage.get("lifecycle.data_key"), lineage.get("lifecycle.tokenizer_key"),
                          lineage.get("lifecycle.preference_set_hash"), lineage.get("lifecycle.reward_model"),
                          lineage.get("lifecycle.rag_index_version"))
    return model

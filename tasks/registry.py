"""Registry steps of the pipeline that are not stages: the run's final chat model becomes `@candidate` and
`@challenger`, tagged with its full lineage (what each stage's `lineage` gives from its output), before the
stage that measures the candidate (evaluate) runs."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.registry import CANDIDATE, CHALLENGER, ModelRef, set_alias, tag_version, version_tags
from lifecycle.store import StageOutput
from tasks.common import graph
from tasks.context import RunContext
from tasks.retries import STAGE_RETRIES


@task(name="mark-challenger", cache_policy=NO_CACHE, **STAGE_RETRIES)
def mark_challenger(ctx: RunContext, model: ModelRef, out: dict[str, StageOutput]) -> ModelRef:
    """Point `<name>@candidate` and `@challenger` at the model this run produced (by reference), with its
    lineage: data, validation result, tokenizer, preference set (from their outputs), reward model and RAG
    index (tagged by their stages), the pipeline's config hash and git commit, and the run it came from."""
    tags: dict[str, str] = {}
    for stage, output in out.items():
        if (lineage := graph()[stage].lineage) is not None:
            tags |= lineage(output)
    tags |= {names.PIPELINE_CONFIG_HASH: ctx.config_hash, "mlflow.source.git.commit": ctx.git_commit,
             names.PIPELINE_RUN_ID: ctx.parent_run_id, "prefect.flow_run_id": ctx.flow_run_id}
    tag_version(model, tags)
    for alias in (CANDIDATE, CHALLENGER):
        set_alias(model, alias)
    MlflowClient().set_tag(ctx.parent_run_id, names.CANDIDATE, str(model))
    lineage = version_tags(model)
    get_run_logger().info("%s is now %s@%s and @%s (data %s, tokenizer %s, preferences %s, reward model %s, "
                          "RAG index version %s)", model, model.name, CANDIDATE, CHALLENGER,
                          *(lineage.get(tag) for tag in (names.DATA_KEY, names.TOKENIZER_KEY, names.PREFERENCE_SET_HASH,
                                                         names.REWARD_MODEL, names.RAG_INDEX_VERSION)))
    return model

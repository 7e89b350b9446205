"""Registry steps of the pipeline that are not stages: the run's final model becomes `@candidate`."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lifecycle.registry import CANDIDATE, ModelRef, set_alias
from tasks.common import RunContext


@task(name="mark-candidate", cache_policy=NO_CACHE)
def mark_candidate(ctx: RunContext, model: ModelRef) -> ModelRef:
    """Point `<name>@candidate` at the model this run produced (by reference), and say so on the run."""
    set_alias(model, CANDIDATE)
    MlflowClient().set_tag(ctx.parent_run_id, "lifecycle.candidate", str(model))
    get_run_logger().info("%s is now %s@%s", model, model.name, CANDIDATE)
    return model

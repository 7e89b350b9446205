"""What every stage task shares: the pipeline's MLflow parent run, the cache check, the MLflow child
run with its lineage tags, the atomic artifact commit and the Prefect artifacts.

A stage task is `run_stage(name, ctx, section, inputs, code, work)`: `work(dirs)` does the stage's job
into `dirs.out` (a temporary folder renamed into the store on success) and returns its metrics;
`dirs.checkpoints` survives a killed run (same key, same folder) so long stages can resume, and is
removed once the stage succeeds. Everything else happens here.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run, task_run

from lifecycle.config import Config, Section, config_hash, hash_json
from lifecycle.errors import LifecycleError
from lifecycle.stages import Plan
from lifecycle.store import ArtifactStore, StageOutput, stage_key
from lifecycle.tracking import child_run, git_commit, setup_mlflow


@dataclass(frozen=True)
class RunContext:
    """What tasks need to know about the pipeline run they belong to (passed explicitly, thread-safe)."""

    state_dir: str
    experiment_id: str
    parent_run_id: str
    flow_run_id: str
    git_commit: str
    config_hash: str
    plan: Plan

    def wants(self, stage: str) -> bool:
        return stage in self.plan.run

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(Path(self.state_dir) / "artifacts")


@dataclass(frozen=True)
class StageDirs:
    out: Path  # write the stage's outputs here
    checkpoints: Path  # resumable state; kept across crashes, removed after success
    key: str


@contextmanager
def pipeline_run(cfg: Config, state_dir: Path, plan: Plan, profile: str) -> Iterator[RunContext]:
    """The MLflow parent run of one pipeline flow run."""
    experiment_id = setup_mlflow(state_dir, cfg.run.experiment)
    commit = git_commit(Path(__file__).resolve().parents[1])
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "mlflow.source.git.commit": commit, "lifecycle.config_hash": config_hash(cfg),
            "lifecycle.profile": profile, "lifecycle.stages": ",".join(plan.run)}
    name = f"pipeline-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=tags) as parent:
        mlflow.log_dict(cfg.dump(), "config.json")
        mlflow.log_params({"profile": profile, "until": plan.run[-1], "seed": cfg.run.seed})
        yield RunContext(state_dir=str(state_dir), experiment_id=experiment_id, parent_run_id=parent.info.run_id,
                         flow_run_id=str(flow_run.id), git_commit=commit, config_hash=config_hash(cfg), plan=plan)


def run_stage(stage: str, ctx: RunContext, section: Section, inputs: dict[str, StageOutput], code: str,
              work: Callable[[StageDirs], dict[str, float]], extra_key: dict[str, str] | None = None) -> StageOutput:
    """Return the stage's output: from the cache when nothing it depends on changed, else computed."""
    logger = get_run_logger()
    section_data = section.model_dump(mode="json", by_alias=True)
    key_inputs = {name: out.key for name, out in inputs.items()} | (extra_key or {})
    key = stage_key(stage, section_data, key_inputs, code)
    store = ctx.store
    cached = store.lookup(stage, key)
    if stage in ctx.plan.reuse:
        if cached is None:
            raise LifecycleError(f"--from: stage '{stage}' has no cached output for the current config and inputs "
                                 f"(key {key}); run without --from first")
        logger.info("%s: reusing cached output %s (--from)", stage, key)
        return cached
    tags = {"lifecycle.stage": stage, "lifecycle.key": key, "lifecycle.config_hash": hash_json(section_data),
            "lifecycle.pipeline_config_hash": ctx.config_hash, "prefect.flow_run_id": ctx.flow_run_id,
            "prefect.task_run_id": str(task_run.id), "mlflow.source.git.commit": ctx.git_commit}
    tags |= {f"lifecycle.input.{name}": value for name, value in key_inputs.items()}
    if cached is not None and stage not in ctx.plan.force:
        logger.info("%s: cache hit %s (computed by MLflow run %s); nothing to do", stage, key, cached.run_id)
        tags |= {"lifecycle.cache_hit": "true", "lifecycle.cached_from_run": cached.run_id}
        with child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags):
            mlflow.log_metrics(_metric_names(stage, cached.metrics) | {f"{stage}/cache_hit": 1.0})
        return cached
    logger.info("%s: computing %s", stage, key)
    started = time.perf_counter()
    with child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags | {"lifecycle.cache_hit": "false"}) as run:
        with store.building(stage, key) as tmp:
            checkpoints = Path(ctx.state_dir) / "checkpoints" / stage / key
            metrics = work(StageDirs(out=tmp, checkpoints=checkpoints, key=key))
            metrics = {k: float(v) for k, v in metrics.items()}
            output = store.commit(tmp, StageOutput(stage=stage, key=key, path=str(store.path(stage, key)),
                                                   run_id=run.info.run_id, metrics=metrics))
        shutil.rmtree(checkpoints, ignore_errors=True)
        seconds = time.perf_counter() - started
        mlflow.log_metrics(_metric_names(stage, metrics) | {f"{stage}/seconds": seconds, f"{stage}/cache_hit": 0.0})
    create_table_artifact(key=f"{_slug(stage)}-metrics", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                          description=f"{stage} metrics (key {key})")
    logger.info("%s: done in %.1f s -> %s", stage, seconds, output.path)
    return replace(output, cached=False)


def _metric_names(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{stage}/{k}": float(v) for k, v in metrics.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")

"""The stage runtime: how any stage runs, naming none. A stage task is `run_stage(STAGE, ctx, inputs, work)`:
the cache check, the MLflow child run with its lineage tags, the atomic commit of its output, its Prefect
artifacts. `work(dirs)` does the stage's job into `dirs.out` (a temporary folder renamed into the store on
success) and returns its metrics (and, for a model stage, the registered version); `dirs.checkpoints`
survives a killed run (same key, same folder) so long stages can resume, and is removed once the stage
succeeds. The key comes from the stage's node (lifecycle/stages.py), so a task cannot read inputs its node
does not declare. A task imports the library code that computes (torch, transformers, TRL, datasets,
LanceDB...) inside `work`: a run of cache hits never loads it (docs/BENCHMARKS.md, "Start-up cost").

Every stage task is declared `@task(..., **STAGE_RETRIES)` (tasks/retries.py): a transient failure is
retried with a bounded backoff; anything else fails at once. A full or read-only disk under the state
directory fails as a `StorageError` naming the path, with no partial output left behind. The parent run
and `RunContext` are in tasks/context.py, the torchrun launcher in tasks/launch.py, the graph in
tasks/graph.py.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run, task_run

from lifecycle import names
from lifecycle.config import Config
from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.faults import storage_errors
from lifecycle.hashing import hash_json
from lifecycle.hub import SCRATCH, init_checkpoint
from lifecycle.registry import ModelRef
from lifecycle.runtime import RunSettings
from lifecycle.stages import Graph, Plan, Stage, key_extras, section_data, stage_key
from lifecycle.store import StageOutput
from lifecycle.tracking import child_run, fail_stale_runs
from tasks.context import RunContext, pipeline_run


@dataclass(frozen=True)
class StageDirs:
    out: Path  # write the stage's outputs here
    checkpoints: Path  # resumable state; kept across crashes, removed after success
    key: str


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    model: ModelRef | None = None  # the version a model stage registered
    digest: str | None = None  # a content hash of the output, when its key does not fix its content
    tags: dict[str, str] = field(default_factory=dict)  # extra tags for the stage's MLflow run
    worker: bool = False  # a node other than 0 of a multi-node run: node 0 commits the output (and registers)


def seed(cfg: Config) -> dict[str, str]:
    """The key extra of a stage whose result depends on the run's seed (`Stage.extras`)."""
    return {"seed": str(cfg.run.seed)}


def check_init(cfg: Config, scratch: Path) -> None:
    """A checkpoint in pretrain.init reads only its own tokenizer's ids, and only a checkpoint has one: the two
    settings go together; the checkpoint itself is found and checked (init_checkpoint)."""
    from lifecycle.config.loader import describe

    from_model, checkpoint = cfg.tokenize.tokenizer == "from_model", cfg.pretrain.init != SCRATCH
    if from_model and not checkpoint:
        raise ConfigError("invalid configuration:\n" + describe(
            "tokenize.tokenizer", "from_model", "the tokenizer of pretrain.init's checkpoint, and pretrain.init is "
            "scratch: set pretrain.init to a hub id or a folder, or tokenize.tokenizer: train", cfg._origin))
    if checkpoint and not from_model:
        raise ConfigError("invalid configuration:\n" + describe(
            "tokenize.tokenizer", cfg.tokenize.tokenizer, f"pretrain.init is a checkpoint ({cfg.pretrain.init}), "
            "which reads only its own tokenizer's ids: set tokenize.tokenizer: from_model", cfg._origin))
    init_checkpoint(cfg)


def init_extras(cfg: Config) -> dict[str, str]:
    """The key extra of a stage that starts from pretrain.init: the checkpoint's identity (hub id at its commit,
    or the folder's content digest)."""
    found = init_checkpoint(cfg)
    return {"init": found.identity} if found else {}


def graph() -> Graph:
    from tasks.graph import GRAPH  # the stage modules import this one: assembled once they are loaded

    return GRAPH


@contextmanager
def stage_scope(stage: Stage, ctx: RunContext | None, settings: RunSettings,
                given: dict[str, StageOutput]) -> Iterator[tuple[RunContext, dict[str, StageOutput]]]:
    """(context, inputs) for a stage flow: the pipeline's when it calls the flow, else (a deployment
    running one stage) a parent run of its own, with the inputs read from the cache."""
    if ctx is not None:
        missing = [name for name in stage.inputs if given.get(name) is None]
        if missing:
            raise LifecycleError(f"stage {stage.name}: the pipeline did not pass {missing}")
        yield ctx, {name: given[name] for name in stage.inputs}
        return
    cfg = settings.load()
    check_stages(cfg, (stage.name,))
    with pipeline_run(settings, cfg, Plan(run=(stage.name,), reuse=(), force=())) as own:
        yield own, cached_inputs(own, stage)


def check_stages(cfg: Config, stages: tuple[str, ...], ctx: RunContext | None = None) -> None:
    """The pre-flight checks (`Stage.check`: constructing third-party trainer configs) of the stages about to
    run: a bad key fails now, before any work, naming the key and its file. Given the pipeline's `ctx`, a
    stage that will be a cache hit is left out: it builds no trainer, and a cached run need not import TRL."""
    scratch = Path(cfg.run.state_dir) / "checkpoints"
    for name in stages:
        spec = graph()[name]
        if spec.check and (ctx is None or will_compute(ctx, name)):
            spec.check(cfg, scratch / name)


def will_compute(ctx: RunContext, stage: str) -> bool:
    """Whether `stage` computes in this run: forced (--from), or nothing cached for its planned key."""
    if stage in ctx.plan.reuse or stage not in ctx.plan.run:
        return False
    if stage in ctx.plan.force:
        return True
    key = graph().planned_keys(ctx.cfg, stage, _identity(ctx), _planned_dynamic(ctx))[stage]
    return ctx.store.lookup(stage, key) is None


def cached_inputs(ctx: RunContext, stage: Stage) -> dict[str, StageOutput]:
    """The cached outputs `stage` reads, and a check that its gates passed, for the current config."""
    found: dict[str, StageOutput] = {}
    for name in stage.inputs + stage.after:
        key = graph().planned_keys(ctx.cfg, name, _identity(ctx), _planned_dynamic(ctx))[name]
        output = ctx.store.lookup(name, key)
        if output is None:
            raise LifecycleError(f"stage {stage.name} runs on the cached output of {name}, but there is none for "
                                 f"this configuration (key {key}): run `lifecycle run --until {name}` with the same "
                                 "--profile/--set first")
        if name in stage.inputs:
            found[name] = output
    return found


def _identity(ctx: RunContext) -> Callable[[str, str], str]:
    def identity(stage: str, key: str) -> str:
        found = ctx.store.lookup(stage, key)
        return found.identity if found else key

    return identity


def _planned_dynamic(ctx: RunContext) -> Callable[[str, str, dict[str, str]], str]:
    def value(stage: str, extra: str, input_keys: dict[str, str]) -> str:
        found = {name: ctx.store.lookup(name, key) for name, key in input_keys.items()}
        return graph()[stage].dynamic[extra](ctx, {name: out.model for name, out in found.items() if out})

    return value


def key_parts(ctx: RunContext, stage: Stage, inputs: dict[str, StageOutput]) -> tuple[str, dict[str, str],
                                                                                      dict[str, str]]:
    """(key, what it takes from each input, extras) of `stage` on these inputs in this run."""
    key_inputs = {name: out.identity for name, out in inputs.items()}  # a content hash where the key is not enough
    models = {name: out.model for name, out in inputs.items()}
    extras = key_extras(stage, ctx.cfg, lambda extra: stage.dynamic[extra](ctx, models))  # e.g. source hashes
    return stage_key(stage, ctx.cfg, key_inputs, extras), key_inputs, extras  # refuses undeclared inputs


def computes_now(ctx: RunContext, stage: Stage, inputs: dict[str, StageOutput]) -> bool:
    """Whether `stage` computes on these inputs: forced (--from), or nothing cached for its key. For the work a
    stage does before its cached task (publishing a batch to vote on), which a cache hit must skip."""
    key, _, _ = key_parts(ctx, stage, inputs)
    return stage.name in ctx.plan.force or ctx.store.lookup(stage.name, key) is None


def run_stage(spec: Stage, ctx: RunContext, inputs: dict[str, StageOutput],
              work: Callable[[StageDirs], StageResult]) -> StageOutput:
    """Return the stage's output: from the cache when nothing it depends on changed, else computed."""
    logger, stage = get_run_logger(), spec.name
    key, key_inputs, extras = key_parts(ctx, spec, inputs)
    store = ctx.store
    cached = store.lookup(stage, key)
    if stage in ctx.plan.reuse:
        if cached is None:
            raise LifecycleError(f"--from: stage '{stage}' has no cached output for the current config and inputs "
                                 f"(key {key}); run without --from first")
        logger.info("%s: reusing cached output %s (--from)", stage, key)
        return cached
    section = section_data(spec, ctx.cfg)
    tags = {names.STAGE: stage, names.KEY: key, names.CONFIG_HASH: hash_json(section),
            names.PIPELINE_CONFIG_HASH: ctx.config_hash, "prefect.flow_run_id": ctx.flow_run_id,
            "prefect.task_run_id": str(task_run.id), "mlflow.source.git.commit": ctx.git_commit}
    if str(flow_run.id) != ctx.flow_run_id:
        tags["prefect.stage_flow_run_id"] = str(flow_run.id)
    tags |= {names.INPUT + name: value for name, value in (key_inputs | extras).items()}
    if task_run.run_count > 1 and (stale := fail_stale_runs(ctx.experiment_id, str(task_run.id))):
        logger.info("%s: marked FAILED the MLflow run(s) a failed attempt left open: %s", stage, ", ".join(stale))
    if cached is not None and stage not in ctx.plan.force:
        logger.info("%s: cache hit %s (computed by MLflow run %s); nothing to do", stage, key, cached.run_id)
        tags |= {names.CACHE_HIT: "true", names.CACHED_FROM_RUN: cached.run_id}
        if cached.model:
            tags[names.MODEL] = str(cached.model)
        with child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags):
            mlflow.log_metrics(_metric_names(stage, cached.metrics) | {names.metric(stage, "cache_hit"): 1.0})
        return cached
    logger.info("%s: computing %s", stage, key)
    started = time.perf_counter()
    state = Path(ctx.state_dir)  # where a stage writes: its output, its checkpoints, MLflow's store, the rest
    with storage_errors(stage, [store.root / stage, state / "checkpoints", state / "mlflow", state]), \
            child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags | {names.CACHE_HIT: "false"}) as run:
        with store.building(stage, key) as tmp:
            checkpoints = Path(ctx.state_dir) / "checkpoints" / stage / key
            result = work(StageDirs(out=tmp, checkpoints=checkpoints, key=key))
            metrics = {k: float(v) for k, v in result.metrics.items()}
            output = StageOutput(stage=stage, key=key, path=str(store.path(stage, key)), run_id=run.info.run_id,
                                 metrics=metrics, model=result.model, digest=result.digest)
            if result.worker:  # nothing to commit here; the checkpoints stay for node 0 (shared storage)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                output = store.commit(tmp, output)
                shutil.rmtree(checkpoints, ignore_errors=True)
        seconds = time.perf_counter() - started
        mlflow.log_metrics(_metric_names(stage, metrics) | {names.metric(stage, "seconds"): seconds,
                                                         names.metric(stage, "cache_hit"): 0.0})
        mlflow.set_tags({names.DEVICE: "cpu", names.DEVICE_COUNT: "1"} | result.tags |
                        ({names.MODEL: str(result.model)} if result.model else {}))
    create_table_artifact(key=f"{_slug(stage)}-metrics", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                          description=f"{stage} metrics (key {key})")
    logger.info("%s: done in %.1f s -> %s", stage, seconds, output.path)
    return replace(output, cached=False)


def _metric_names(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {names.metric(stage, k): float(v) for k, v in metrics.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")

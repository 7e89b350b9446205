"""What every stage shares: the MLflow parent run of a flow run (re-attached when the flow run resumes),
the cache check, the MLflow child run with its lineage tags, the atomic artifact commit and the Prefect
artifacts.

A stage task is `run_stage(name, ctx, inputs, work)`: `work(dirs)` does the stage's job into `dirs.out`
(a temporary folder renamed into the store on success) and returns its metrics (and, for a model stage,
the registered version); `dirs.checkpoints` survives a killed run (same key, same folder) so long stages
can resume, and is removed once the stage succeeds. The key comes from the stage graph
(lifecycle/stages.py), so a task cannot read inputs the graph does not declare. A task imports the
library code that computes (torch, transformers, TRL, datasets, LanceDB...) inside `work`: a run of cache
hits never loads it (docs/BENCHMARKS.md, "Start-up cost").

Every stage task is declared `@task(..., **STAGE_RETRIES)` (tasks/retries.py): a transient failure is
retried with a bounded backoff; anything else fails at once. A full or read-only disk under the state
directory fails as a `StorageError` naming the path, with no partial output left behind.
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
from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.exceptions import Pause
from prefect.runtime import flow_run, task_run

from lifecycle.config import Config, config_hash
from lifecycle.config.distributed import LaunchConfig
from lifecycle.errors import LifecycleError
from lifecycle.faults import storage_errors, unavailable
from lifecycle.hashing import hash_json
from lifecycle.orphans import PROCESS, close_orphans, process_token
from lifecycle.registry import ModelRef
from lifecycle.runtime import RunSettings
from lifecycle.stages import STAGES, Plan, key_extras, planned_keys, section_data, stage_key
from lifecycle.store import ArtifactStore, StageOutput
from lifecycle.tracking import (child_run, close_parent_run, fail_stale_runs, git_commit, open_parent_run,
                                setup_mlflow, tracking_uri)


@dataclass(frozen=True)
class RunContext:
    """What stages need to know about the flow run they belong to (passed explicitly, thread-safe)."""

    cfg: Config
    settings: RunSettings
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

    @property
    def models_dir(self) -> Path:
        """Local copies of registered versions (registry.local_copy)."""
        return Path(self.state_dir) / "models"


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


@contextmanager
def pipeline_run(settings: RunSettings, cfg: Config, plan: Plan) -> Iterator[RunContext]:
    """The MLflow parent run of this Prefect flow run: created, or re-attached when the flow run resumes.
    It ends FINISHED or FAILED with the flow; a suspended flow (Prefect's Pause) leaves it RUNNING."""
    state_dir = settings.state(cfg)
    with storage_errors(None, [state_dir / "mlflow", state_dir]), unavailable(
            "MLflow tracking", tracking_uri(state_dir), "start it (or check MLFLOW_TRACKING_URI) and run again"):
        experiment_id = setup_mlflow(state_dir, cfg.run.experiment)  # the first contact: no stage has run yet
    commit, cfg_hash = git_commit(Path(__file__).resolve().parents[1]), config_hash(cfg)
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "mlflow.source.git.commit": commit, "lifecycle.config_hash": cfg_hash,
            "lifecycle.profile": settings.profile, "lifecycle.stages": ",".join(plan.run)}
    name = f"{flow_run.flow_name}-{settings.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id, resumed = open_parent_run(experiment_id, str(flow_run.id), name, tags)
    MlflowClient().set_tag(run_id, PROCESS, process_token())  # whose run it is (a resumed flow: this process's)
    closed = close_orphans(experiment_id, str(flow_run.id))
    if same := [r.info.run_id for r in closed if r.data.tags.get("lifecycle.config_hash") == cfg_hash]:
        MlflowClient().set_tag(run_id, "lifecycle.resumes_run", ",".join(same))  # killed runs of this config
    if closed:
        get_run_logger().warning("closed %d run(s) whose process died: %s (MLflow KILLED, Prefect Crashed)",
                                 len(closed), ", ".join(r.info.run_id for r in closed))
    if resumed:
        get_run_logger().info("re-attached to MLflow parent run %s of flow run %s", run_id, flow_run.id)
    else:
        client = MlflowClient()
        client.log_dict(run_id, cfg.dump(), "config.json")
        for key, value in {"profile": settings.profile, "until": plan.run[-1], "seed": cfg.run.seed}.items():
            client.log_param(run_id, key, value)
    status: str | None = "FAILED"
    try:
        yield RunContext(cfg=cfg, settings=settings, state_dir=str(state_dir), experiment_id=experiment_id,
                         parent_run_id=run_id, flow_run_id=str(flow_run.id), git_commit=commit,
                         config_hash=cfg_hash, plan=plan)
        status = "FINISHED"
    except Pause:
        status = None  # suspended: the same flow run comes back and re-attaches
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status:
            close_parent_run(run_id, status)


@contextmanager
def stage_scope(stage: str, ctx: RunContext | None, settings: RunSettings,
                given: dict[str, StageOutput | None]) -> Iterator[tuple[RunContext, dict[str, StageOutput]]]:
    """(context, inputs) for a stage flow: the pipeline's when it calls the flow, else (a deployment
    running one stage) a parent run of its own, with the inputs read from the cache."""
    if ctx is not None:
        missing = [name for name in STAGES[stage].inputs if given.get(name) is None]
        if missing:
            raise LifecycleError(f"stage {stage}: the pipeline did not pass {missing}")
        yield ctx, {name: out for name, out in given.items() if out is not None}
        return
    cfg = settings.load()
    check_trainer_sections(cfg, (stage,))
    with pipeline_run(settings, cfg, Plan(run=(stage,), reuse=(), force=())) as own:
        yield own, cached_inputs(own, stage)


def check_trainer_sections(cfg: Config, stages: tuple[str, ...], ctx: RunContext | None = None) -> None:
    """Construct the third-party trainer configs of the stages about to run: a bad key fails now, before
    any work, naming the key and its file. Given the pipeline's `ctx`, a stage that will be a cache hit is
    left out: it builds no trainer, and a cached run need not import TRL (seconds)."""
    if ctx is not None:
        stages = tuple(s for s in stages if s in ("sft", "rlhf") and will_compute(ctx, s))
    scratch = Path(cfg.run.state_dir) / "checkpoints"
    if "sft" in stages:
        from lifecycle.align.sft import sft_args

        sft_args(cfg, scratch / "sft", max_length=1)
    if "rlhf" in stages:
        from lifecycle.align.dpo import dpo_args
        from lifecycle.align.policy import policy_args
        from lifecycle.align.reward import reward_args

        if cfg.rlhf.method == "dpo":
            dpo_args(cfg, scratch / "rlhf", max_length=1)
        else:
            reward_args(cfg, scratch / "rlhf", max_length=1)
            policy_args(cfg, scratch / "rlhf", cfg.rlhf.method)


def will_compute(ctx: RunContext, stage: str) -> bool:
    """Whether `stage` computes in this run: forced (--from), or nothing cached for its planned key."""
    if stage in ctx.plan.reuse or stage not in ctx.plan.run:
        return False
    if stage in ctx.plan.force:
        return True
    key = planned_keys(ctx.cfg, stage, _identity(ctx), _planned_dynamic(ctx))[stage]
    return ctx.store.lookup(stage, key) is None


def cached_inputs(ctx: RunContext, stage: str) -> dict[str, StageOutput]:
    """The cached outputs `stage` reads, and a check that its gates passed, for the current config."""
    spec = STAGES[stage]
    found: dict[str, StageOutput] = {}
    for name in spec.inputs + spec.after:
        key = planned_keys(ctx.cfg, name, _identity(ctx), _planned_dynamic(ctx))[name]
        output = ctx.store.lookup(name, key)
        if output is None:
            raise LifecycleError(f"stage {stage} runs on the cached output of {name}, but there is none for this "
                                 f"configuration (key {key}): run `lifecycle run --until {name}` with the same "
                                 "--profile/--set first")
        if name in spec.inputs:
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
        return dynamic_extra(ctx, extra, {name: out.model for name, out in found.items() if out is not None})

    return value


def dynamic_extra(ctx: RunContext, extra: str, models: dict[str, ModelRef | None]) -> str:
    """A key extra only the running pipeline can read (lifecycle.stages.DYNAMIC): the champion the evaluate
    stage compares with (given its candidate, the rlhf model), or the preference store's feedback digest."""
    if extra == "champion":
        from lifecycle.evaluate.promotion import champion_before

        found = champion_before(ctx.cfg.run.models.chat, models.get("rlhf"))
        return str(found) if found else "none"
    if extra == "feedback":
        from lifecycle.preferences.feedback import feedback_digest
        from tasks.preferences import open_store

        return feedback_digest(open_store(ctx))
    raise LifecycleError(f"unknown dynamic key extra {extra!r}")


def key_parts(ctx: RunContext, stage: str, inputs: dict[str, StageOutput]) -> tuple[str, dict[str, str],
                                                                                    dict[str, str]]:
    """(key, what it takes from each input, extras) of `stage` on these inputs in this run."""
    key_inputs = {name: out.identity for name, out in inputs.items()}  # a content hash where the key is not enough
    models = {name: out.model for name, out in inputs.items()}
    extras = key_extras(STAGES[stage], ctx.cfg, lambda extra: dynamic_extra(ctx, extra, models))  # e.g. source hashes
    return stage_key(STAGES[stage], ctx.cfg, key_inputs, extras), key_inputs, extras  # refuses undeclared inputs


def run_stage(stage: str, ctx: RunContext, inputs: dict[str, StageOutput],
              work: Callable[[StageDirs], StageResult]) -> StageOutput:
    """Return the stage's output: from the cache when nothing it depends on changed, else computed."""
    logger, spec = get_run_logger(), STAGES[stage]
    key, key_inputs, extras = key_parts(ctx, stage, inputs)
    store = ctx.store
    cached = store.lookup(stage, key)
    if stage in ctx.plan.reuse:
        if cached is None:
            raise LifecycleError(f"--from: stage '{stage}' has no cached output for the current config and inputs "
                                 f"(key {key}); run without --from first")
        logger.info("%s: reusing cached output %s (--from)", stage, key)
        return cached
    section = section_data(spec, ctx.cfg)
    tags = {"lifecycle.stage": stage, "lifecycle.key": key, "lifecycle.config_hash": hash_json(section),
            "lifecycle.pipeline_config_hash": ctx.config_hash, "prefect.flow_run_id": ctx.flow_run_id,
            "prefect.task_run_id": str(task_run.id), "mlflow.source.git.commit": ctx.git_commit}
    if str(flow_run.id) != ctx.flow_run_id:
        tags["prefect.stage_flow_run_id"] = str(flow_run.id)
    tags |= {f"lifecycle.input.{name}": value for name, value in (key_inputs | extras).items()}
    if task_run.run_count > 1 and (stale := fail_stale_runs(ctx.experiment_id, str(task_run.id))):
        logger.info("%s: marked FAILED the MLflow run(s) a failed attempt left open: %s", stage, ", ".join(stale))
    if cached is not None and stage not in ctx.plan.force:
        logger.info("%s: cache hit %s (computed by MLflow run %s); nothing to do", stage, key, cached.run_id)
        tags |= {"lifecycle.cache_hit": "true", "lifecycle.cached_from_run": cached.run_id}
        if cached.model:
            tags["lifecycle.model"] = str(cached.model)
        with child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags):
            mlflow.log_metrics(_metric_names(stage, cached.metrics) | {f"{stage}/cache_hit": 1.0})
        return cached
    logger.info("%s: computing %s", stage, key)
    started = time.perf_counter()
    state = Path(ctx.state_dir)  # where a stage writes: its output, its checkpoints, MLflow's store, the rest
    with storage_errors(stage, [store.root / stage, state / "checkpoints", state / "mlflow", state]), \
            child_run(stage, ctx.parent_run_id, ctx.experiment_id, tags | {"lifecycle.cache_hit": "false"}) as run:
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
        mlflow.log_metrics(_metric_names(stage, metrics) | {f"{stage}/seconds": seconds, f"{stage}/cache_hit": 0.0})
        mlflow.set_tags({"lifecycle.device": "cpu", "lifecycle.device_count": "1"} | result.tags |
                        ({"lifecycle.model": str(result.model)} if result.model else {}))
    create_table_artifact(key=f"{_slug(stage)}-metrics", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                          description=f"{stage} metrics (key {key})")
    logger.info("%s: done in %.1f s -> %s", stage, seconds, output.path)
    return replace(output, cached=False)


def device_tags(preference: str, count: int = 1) -> dict[str, str]:
    """`lifecycle.device` ("cpu", "cuda:<GPU name>") and `lifecycle.device_count` of a stage's run: what the
    report card prices its wall time by."""
    from lifecycle.train.distributed import resolve_device

    device = resolve_device(preference)
    name = "cpu"
    if device.type == "cuda":
        import torch

        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {"lifecycle.device": name, "lifecycle.device_count": str(count)}


def launch_stage(stage: str, module: str, args: list[str], launch: LaunchConfig, dirs: StageDirs,
                 expect: Path) -> bool:
    """Run the library's `module` under torchrun for `stage` (the rendezvous id comes from the stage key, the
    same on every node; MLflow's URI goes with it). True on node 0, where global rank 0 wrote `expect` and
    the task registers; False on any other node (its StageResult is then `worker=True`: nothing to commit)."""
    from lifecycle.train.distributed import launch_torchrun

    logger = get_run_logger()
    launch_torchrun(module, args, launch, f"{stage}-{dirs.key[:16]}",
                    env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}, logger=logger)
    if launch.node_rank > 0:
        logger.info("%s: node %d of %d done; node 0 commits and registers the result", stage, launch.node_rank,
                    launch.nnodes)
        return False
    if not expect.exists():
        raise LifecycleError(f"{stage}: torchrun finished but global rank 0 did not write {expect}"
                             + (f": with {stage}.distributed.rdzv_backend c10d torchrun may put rank 0 on another "
                                "node; use static, where node_rank 0 runs it" if launch.nnodes > 1 else ""))
    return True


def _metric_names(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{stage}/{k}": float(v) for k, v in metrics.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")

"""The flow run's context: the MLflow parent run of a Prefect flow run (created, or re-attached when the
flow run resumes) and `RunContext`, what every stage of the run is handed (explicitly: Prefect runs tasks
in threads, and MLflow's active run is thread-local)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.exceptions import Pause
from prefect.runtime import flow_run

from lifecycle.config import Config, config_hash
from lifecycle.faults import storage_errors, unavailable
from lifecycle.names import CONFIG_HASH, PROCESS, PROFILE, RESUMES_RUN, STAGES
from lifecycle.orphans import close_orphans, process_token
from lifecycle.runtime import RunSettings
from lifecycle.stages import Plan
from lifecycle.store import ArtifactStore
from lifecycle.tracking import close_parent_run, git_commit, open_parent_run, setup_mlflow, tracking_uri


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

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Prefect describes and validates flow parameters with pydantic: a RunContext is checked by type only.
        As a dataclass it would be described field by field, the whole Config with it: ~40 ms of JSON schema
        per stage flow, at every import of flows/stages.py, for a parameter only ever passed in-process."""
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(cls)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(Path(self.state_dir) / "artifacts")

    @property
    def models_dir(self) -> Path:
        """Local copies of registered versions (registry.local_copy)."""
        return Path(self.state_dir) / "models"



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
            "mlflow.source.git.commit": commit, CONFIG_HASH: cfg_hash,
            PROFILE: settings.profile, STAGES: ",".join(plan.run)}
    name = f"{flow_run.flow_name}-{settings.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id, resumed = open_parent_run(experiment_id, str(flow_run.id), name, tags)
    MlflowClient().set_tag(run_id, PROCESS, process_token())  # whose run it is (a resumed flow: this process's)
    closed = close_orphans(experiment_id, str(flow_run.id))
    if same := [r.info.run_id for r in closed if r.data.tags.get(CONFIG_HASH) == cfg_hash]:
        MlflowClient().set_tag(run_id, RESUMES_RUN, ",".join(same))  # killed runs of this config
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

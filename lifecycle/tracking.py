"""MLflow wiring: where runs go, the pipeline's parent run and the stages' child runs.

Embedded default: SQLite + local artifacts under the state directory. `MLFLOW_TRACKING_URI` wins when
set. MLflow's active run is thread-local and Prefect runs tasks in worker threads, so child runs always
get their parent's id explicitly.

The parent run is stored with the Prefect flow run id (tag `prefect.flow_run_id`), not held open by one
process: a flow run that resumes (after a pause in the same process, or re-executed in a new process
after a suspend) finds its parent run by that id and logs its remaining stages under it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from lifecycle import db_template
from lifecycle.names import RESUMED, ROLE


# The user's own settings, read when this module is imported, before it points MLflow anywhere:
# `mlflow.set_tracking_uri` and `set_registry_uri` write these variables themselves, so a later read would
# take the state dir set by an earlier call (or by other code in the process) for the user's choice.
USER_URIS = {name: os.environ.get(name) or None for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def _user_uri(name: str) -> str | None:
    return USER_URIS[name]


def tracking_uri(state_dir: Path) -> str:
    return _user_uri("MLFLOW_TRACKING_URI") or tracking_uri_in(state_dir)


def tracking_uri_in(state_dir: Path) -> str:
    """The state dir's own tracking database."""
    return f"sqlite:///{(state_dir / 'mlflow' / 'mlflow.db').resolve()}"


def prepare_database(db: Path) -> None:
    """A new state dir's tracking database: a copy of the empty, migrated one kept for this MLflow version
    (lifecycle/db_template.py), or, the first time, migrated by MLflow and kept. No experiment in it yet:
    MLflow adds its Default experiment, with this state dir's artifact location, when it first opens it."""
    if db_template.seed(db, "mlflow") or db.exists():
        return
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    engine = create_sqlalchemy_engine(f"sqlite:///{partial}")
    try:
        _initialize_tables(engine)  # the tables and every migration, as MLflow runs them on an empty database
    finally:
        engine.dispose()
    db_template.keep(partial, "mlflow")
    db_template.put_in_place(partial, db)


def use_tracking(state_dir: Path) -> str:
    """Point MLflow's tracking and registry at the state dir (or the user's servers); return the URI."""
    uri = tracking_uri(state_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(_user_uri("MLFLOW_REGISTRY_URI") or uri)
    return uri


def setup_mlflow(state_dir: Path, experiment: str) -> str:
    """Point MLflow at the state directory (unless MLFLOW_TRACKING_URI is set); return the experiment id."""
    (state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    uri = use_tracking(state_dir)
    if uri == tracking_uri_in(state_dir):
        prepare_database(state_dir / "mlflow" / "mlflow.db")
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (state_dir / "mlflow" / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def open_parent_run(experiment_id: str, flow_run_id: str, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """(run id, resumed): the parent run of this Prefect flow run, re-attached (status back to RUNNING)
    when the flow run already has one, else created."""
    client = MlflowClient()
    query = f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`{ROLE}` = 'pipeline'"
    found = client.search_runs([experiment_id], query, max_results=1)
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        client.set_tag(run.info.run_id, RESUMED, str(int(run.data.tags.get(RESUMED, 0)) + 1))
        return run.info.run_id, True
    run = client.create_run(experiment_id, run_name=name, tags=tags | {ROLE: "pipeline"})
    return run.info.run_id, False


def close_parent_run(run_id: str, status: str) -> None:
    MlflowClient().set_terminated(run_id, status)


def git_commit(where: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@contextmanager
def child_run(name: str, parent_run_id: str, experiment_id: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run nested under `parent_run_id`, active in this thread for the fluent API."""
    with mlflow.start_run(run_name=name, experiment_id=experiment_id, parent_run_id=parent_run_id,
                          nested=True, tags=tags) as run:
        yield run


def fail_stale_runs(experiment_id: str, task_run_id: str) -> list[str]:
    """Mark FAILED the stage runs of this Prefect task run that are still RUNNING: a failed attempt could not
    end its run when the tracking store was the thing that failed; the retry is about to open a new one."""
    client = MlflowClient()
    query = f"tags.`prefect.task_run_id` = '{task_run_id}' and attributes.status = 'RUNNING'"
    stale = [run.info.run_id for run in client.search_runs([experiment_id], query)]
    for run_id in stale:
        client.set_terminated(run_id, "FAILED")
    return stale

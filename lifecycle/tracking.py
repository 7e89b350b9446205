"""MLflow wiring: where runs go, the pipeline's parent run and the stages' child runs.

Embedded default: SQLite + local artifacts under the state directory. `MLFLOW_TRACKING_URI` wins when
set. MLflow's active run is thread-local and Prefect runs tasks in worker threads, so child runs always
get their parent's id explicitly.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient


@functools.cache
def _user_uri(name: str) -> str | None:
    """The user's own setting, read once: `mlflow.set_tracking_uri` writes MLFLOW_TRACKING_URI itself."""
    return os.environ.get(name) or None


def tracking_uri(state_dir: Path) -> str:
    return _user_uri("MLFLOW_TRACKING_URI") or f"sqlite:///{(state_dir / 'mlflow' / 'mlflow.db').resolve()}"


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
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (state_dir / "mlflow" / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def latest_model_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The newest version of a registered model, or None when nothing is registered under `name`."""
    versions = client.search_model_versions(f"name = '{name}'") if "'" not in name else []
    return max(versions, key=lambda v: int(v.version)) if versions else None


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

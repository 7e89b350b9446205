"""A model version registered by a stage run that was killed before its output was committed: the re-run of
the same stage key adopts it when it trained the same weights (no second version), deletes it when it
trained other weights, and leaves versions of finished runs and other keys alone."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from lifecycle.registry import ModelRef, register_model, version_tags
from lifecycle.resume import register_once, same_weights
from lifecycle.tracking import setup_mlflow
from tests.unit.test_rag_answer import save_tiny_policy

NAME = "tiny-chat"


def register_in_run(experiment: str, model_dir: Path, key: str, status: str) -> ModelRef:
    """What a stage run does before it dies (`status` KILLED) or commits (FINISHED)."""
    with mlflow.start_run(experiment_id=experiment, tags={"lifecycle.key": key}) as run:
        ref = register_model(model_dir, NAME, tags={"lifecycle.stage_key": key})
    MlflowClient().set_terminated(run.info.run_id, status)
    return ref


def live_versions() -> list[str]:
    return [str(v) for v in sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name = '{NAME}'"))]


def test_a_version_left_by_a_killed_run_is_adopted_or_deleted(tmp_path: Path) -> None:
    experiment = setup_mlflow(tmp_path / "state", "resume-test")
    trained = save_tiny_policy(tmp_path / "trained")
    other = save_tiny_policy(tmp_path / "other")
    weights = load_file(str(other / "model.safetensors"))  # the same architecture, other weights
    save_file({k: v + 1.0 for k, v in weights.items()}, str(other / "model.safetensors"))
    assert same_weights(trained, trained) and not same_weights(trained, other)

    finished = register_in_run(experiment, trained, "key-a", "FINISHED")  # a committed output's version
    elsewhere = register_in_run(experiment, trained, "key-b", "KILLED")  # another key: not this stage's
    dangling = register_in_run(experiment, trained, "key-a", "KILLED")
    with mlflow.start_run(experiment_id=experiment, tags={"lifecycle.key": "key-a"}):  # the re-run
        adopted = register_once(trained, NAME, {"lifecycle.stage_key": "key-a", "lifecycle.note": "re-run"},
                                tmp_path / "models")
    assert adopted == dangling and version_tags(adopted)["lifecycle.note"] == "re-run"
    assert live_versions() == [finished.version, elsewhere.version, dangling.version]

    stale = register_in_run(experiment, other, "key-c", "FAILED")
    with mlflow.start_run(experiment_id=experiment, tags={"lifecycle.key": "key-c"}):
        fresh = register_once(trained, NAME, {"lifecycle.stage_key": "key-c"}, tmp_path / "models")
    assert int(fresh.version) > int(stale.version)
    assert stale.version not in live_versions() and fresh.version in live_versions()
    with pytest.raises(Exception):
        MlflowClient().get_model_version(NAME, stale.version)

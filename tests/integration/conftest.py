"""The tiny chain most integration tests start from, trained once per session.

`pretrained` is a state dir where ingest -> validate -> tokenize -> pretrain ran with OVERRIDES; `sft_trained`
went on from a copy of it through sft. Each is built once per session, by whichever worker needs it first. Tests that only read a state take it as it is; tests that run more
stages take a copy (`copy_state`) and continue through the pipeline with OVERRIDES (plus their own), so the
stages already there are cache hits and only what the test is about is computed."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import CONF, TINY

TINY_PRETRAIN = ["pretrain.model.n_layer=2", "pretrain.model.n_head=4", "pretrain.model.n_kv_head=2",
                 "pretrain.model.d_model=64", "pretrain.model.d_ff=172", "pretrain.max_steps=60",
                 "pretrain.batch_size=8", "pretrain.micro_batch_size=8", "pretrain.eval_every=30",
                 "pretrain.checkpoint_every=20", "pretrain.log_every=10", "pretrain.device=cpu",
                 "pretrain.optim.lr=3e-3", "pretrain.optim.warmup_steps=3", "pretrain.sample.max_new_tokens=8"]
CHAIN = ["tokenize.context_length=128", "sft.device=cpu", "sft.trainer.max_steps=40", "sft.trainer.logging_steps=10",
         "sft.trainer.per_device_train_batch_size=8", "sft.trainer.learning_rate=3e-3", "sft.trainer.warmup_steps=2",
         "sft.eval.max_pairs=6", "sft.eval.max_new_tokens=12", "rag_index.evaluate.max_questions=10",
         "rag_index.ann.min_rows=100000", "ingest.val_fraction=0.3"]
OVERRIDES = TINY + TINY_PRETRAIN + CHAIN  # the chain: later items win (CHAIN's context length over TINY's)


def copy_state(src: Path, dst: Path) -> Path:
    """A copy of state dir `src` at `dst` for a test to change. MLflow's experiments are moved to `dst`, so the
    runs and models the test adds keep their artifacts under `dst/mlflow/artifacts`; the runs and models that
    were in `src` keep theirs in `src` (MLflow records artifact locations as absolute paths), as the stage
    outputs the copy's manifests name do: both are immutable once written, so `src` stays as it was."""
    mlflow_dir = str(src / "mlflow")
    shutil.copytree(src, dst, symlinks=True, ignore=lambda folder, _: {"artifacts"} if folder == mlflow_dir else set())
    with closing(sqlite3.connect(dst / "mlflow" / "mlflow.db")) as db, db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (src.resolve().as_uri() + "/", dst.resolve().as_uri() + "/"))
    return dst


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A state dir built once per test session, also across pytest-xdist's workers (`make test`): the first
    worker to need it builds it under a lock in the folder the workers share, the others wait for it and
    read the same one (tests change only copies). A build that failed is started again from nothing."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    state, done = root / "chain" / name, root / "chain" / f"{name}.built"
    state.parent.mkdir(exist_ok=True)
    with open(root / "chain" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(state, ignore_errors=True)
            build(state)
            done.touch()
    return state


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> validate -> tokenize -> pretrain with OVERRIDES: the base model `lifecycle-gpt-base/1`."""
    from flows.pipeline import pipeline

    return built_once(tmp_path_factory, "pretrained", lambda state: pipeline(
        overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="pretrain"))


@pytest.fixture(scope="session")
def sft_trained(pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pretrained`, then sft with OVERRIDES: the chat model `lifecycle-gpt/1`."""
    from flows.pipeline import pipeline

    def build(state: Path) -> None:
        copy_state(pretrained, state)
        pipeline(overrides=OVERRIDES, state_dir=str(state), conf_dir=str(CONF), until="sft")

    return built_once(tmp_path_factory, "sft", build)

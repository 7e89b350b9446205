"""Shared test set-up: hermetic environment (no network, Prefect + MLflow inside tmp dirs) and a tiny config."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

gc.disable()  # no cyclic collections while the test modules import torch, transformers, ...: resumed after collection
# Before anything imports prefect: one ephemeral Prefect database for the whole test session.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="lifecycle-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_HOME / "hf-datasets")  # lm-eval's tasks read their JSONL through it
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("LIFECYCLE_HOME", None)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
# One torch CPU thread per process (and per subprocess, which inherit it): the models are tiny, and beside a busy
# neighbour (another test's server or subprocess, another job) a second thread's spin-waits made a training step
# 10-60x slower (docs/BENCHMARKS.md, "Test suite time"). Tests of thread settings start from two (`two_threads`).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lifecycle.tracking  # noqa: E402,F401  reads the user's MLflow settings now, while the environment is clean
from lifecycle.prefect_api import seed_from_template  # noqa: E402
from lifecycle.runtime import prepare_environment  # noqa: E402

prepare_environment(_SESSION_HOME)
seed_from_template(_SESSION_HOME / "prefect" / "prefect.db")  # Prefect's temporary server: no migrations to run

# Property-based tests (tests/unit/test_properties.py): the same examples on every run, no example database
# written into the checkout, no per-example deadline on a shared CI machine. HYPOTHESIS_PROFILE=deep explores more.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("deep", parent=settings.get_profile("ci"), max_examples=2000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One throwaway PostgreSQL server for the whole session, whichever modules ask for it (tests/postgres.py).
from tests.postgres import postgres_server, postgres_url  # noqa: E402,F401

# A small but real corpus: a few stdlib modules' docstrings, with validation thresholds to match.
TINY = [
    "ingest.sources=[{name: stdlib, kind: python-docs, include: [json, textwrap, string, csv, shlex, fnmatch]}]",
    "validate.min_documents=10",
    "validate.min_characters=2000",
    "tokenize.vocab_size=400",
    "tokenize.context_length=32",
    "preferences.mode=simulated",
    "preferences.prompts.held_out=8",
    "preferences.sampling.max_new_tokens=16",
    "rlhf.device=cpu",
    "rlhf.reward.trainer.max_steps=6",
    "rlhf.reward.trainer.logging_steps=2",
    "rlhf.policy.rloo.max_steps=3",
    "rlhf.policy.rloo.num_generations=2",
    "rlhf.policy.rloo.per_device_train_batch_size=4",
    "rlhf.policy.rloo.max_completion_length=8",
    "rlhf.policy.rloo.logging_steps=1",
    "rlhf.dpo.trainer.max_steps=4",
    "rlhf.dpo.trainer.logging_steps=2",
    "rlhf.dpo.trainer.per_device_train_batch_size=4",
    "evaluate.questions=6",
    "evaluate.max_new_tokens=8",
    "evaluate.text_bytes=20000",
    "evaluate.latency_requests=2",
    "evaluate.samples=2",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def conf_dir() -> Path:
    return CONF


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch on two CPU threads for one test, not the suite's one: code that sets its own count for a while
    (training, re-ranking) and does not put it back shows."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test outside tests/unit is an integration test (real flows, servers, processes or a browser), so
    `-m "not integration"` is the unit set, the one `make test-fast` runs.

    Then the modules with a slow test first, the other integration modules next, the unit modules last (each
    module's tests stay together and in order): `make test` hands whole modules to its workers in this order
    (pytest-xdist, `--dist loadfile --no-loadscope-reorder`), so the long ones start early and the short ones
    fill the gaps, instead of a 2-minute module starting last on one worker while the other waits."""
    for item in items:
        if ROOT / "tests" / "unit" not in item.path.parents:
            item.add_marker(pytest.mark.integration)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: 0 if item.path in slow else 1 if item.get_closest_marker("integration") else 2)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()  # what the imports built lives as long as the session
    gc.enable()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Prefect stops its temporary API server at exit and logs it to a stream pytest has already closed.
    import logging

    logging.raiseExceptions = False

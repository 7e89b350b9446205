"""docs/ARCHITECTURE.md "Adding a stage", followed once: in a copy of the project, a toy stage that reads
ingest is added in the four files the steps name (its schema, its field on `Config`, conf/<stage>.yaml,
tasks/<stage>.py), and nothing else. `lifecycle stages` shows it in graph order, and `lifecycle run --until
toy` runs it for real (its own flow, its MLflow run, its output in the store), keyed by its code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifecycle.tracking import tracking_uri

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LIFECYCLE_HOME")

SCHEMA = '''"""conf/toy.yaml: how much each document counts."""

from __future__ import annotations

from pydantic import Field

from lifecycle.config.base import Section


class ToyConfig(Section):
    factor: int = Field(ge=1)
'''

TASK = '''"""The toy stage: counts the ingested documents, times toy.factor."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="toy", cache_policy=NO_CACHE, **STAGE_RETRIES)
def toy(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.data.ingest import read_documents

        count = len(read_documents(inputs["ingest"].path)) * ctx.cfg.toy.factor
        (dirs.out / "count.txt").write_text(str(count))
        return StageResult({"count": count})

    return run_stage(STAGE, ctx, inputs, work)


STAGE = Stage("toy", __name__, inputs=("ingest",), after=("validate",), run=toy,
              produces="the number of ingested documents, times toy.factor")
'''


def add_toy_stage(copy: Path) -> list[str]:
    """The four steps of "Adding a stage"; the files they touch."""
    (copy / "lifecycle" / "config" / "toy.py").write_text(SCHEMA)
    config = copy / "lifecycle" / "config" / "__init__.py"
    text = config.read_text().replace("from lifecycle.config.validate import ValidateConfig\n",
                                      "from lifecycle.config.toy import ToyConfig\n"
                                      "from lifecycle.config.validate import ValidateConfig\n")
    config.write_text(text.replace('    validate_: ValidateConfig = Field(alias="validate")\n',
                                   '    validate_: ValidateConfig = Field(alias="validate")\n    toy: ToyConfig\n'))
    (copy / "conf" / "toy.yaml").write_text("factor: 3\n")
    (copy / "tasks" / "toy.py").write_text(TASK)
    return ["lifecycle/config/toy.py", "lifecycle/config/__init__.py", "conf/toy.yaml", "tasks/toy.py"]


def test_a_stage_added_in_four_files_runs_in_the_pipeline(tmp_path: Path, tiny_overrides: list[str]) -> None:
    copy = tmp_path / "project"
    for part in ("lifecycle", "tasks", "flows", "conf"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    touched = add_toy_stage(copy)
    changed = [str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and (not (ROOT / p.relative_to(copy)).is_file()
                    or (ROOT / p.relative_to(copy)).read_bytes() != p.read_bytes())]
    assert sorted(changed) == sorted(touched) and len(touched) <= 4

    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV} | {"PYTHONPATH": str(copy)}
    stages = subprocess.run([sys.executable, "-m", "lifecycle.cli", "stages"], cwd=copy, env=env, capture_output=True,
                            text=True, check=True).stdout
    order = [line.split()[0] for line in stages.splitlines() if line and not line.startswith(" ")]
    assert order[:4] == ["ingest", "validate", "toy", "tokenize"]

    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "lifecycle.cli", "run", "--until", "toy", "--conf", str(copy / "conf"),
                           "--state-dir", str(state), *(f"--set={o}" for o in tiny_overrides)],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outputs = sorted((state / "artifacts" / "toy").glob("*/count.txt"))
    assert len(outputs) == 1 and int(outputs[0].read_text()) > 0 and int(outputs[0].read_text()) % 3 == 0
    runs = MlflowClient(tracking_uri(state)).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri(state)).search_experiments()],
        "tags.`lifecycle.stage` = 'toy'")
    assert len(runs) == 1 and runs[0].data.metrics["toy/count"] == int(outputs[0].read_text())
    assert json.loads((outputs[0].parent / "_lifecycle.json").read_text())  # committed through the store

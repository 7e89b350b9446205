"""The pipeline flow for real: a Prefect flow run, MLflow parent + child runs, Great Expectations, and
content-hash caching across re-runs, on a tiny stdlib-docs corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from lifecycle.errors import LifecycleError, ValidationFailed
from lifecycle.tracking import tracking_uri

pytestmark = pytest.mark.integration


def run(state: Path, conf_dir: Path, overrides: list[str], **kw: str) -> dict:
    return pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), **kw)


def child_runs(state: Path) -> list:
    client = MlflowClient(tracking_uri(state))
    exp = client.get_experiment_by_name("llm-lifecycle")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_pipeline_tracks_caches_and_recomputes_only_what_changed(tmp_path: Path, conf_dir: Path,
                                                                 tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"
    first = run(state, conf_dir, tiny_overrides, until="tokenize")
    assert [s for s, out in first.items() if out["cached"]] == []
    assert Path(first["tokenize"]["path"], "tokenizer", "tokenizer.json").is_file()

    runs = child_runs(state)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["lifecycle.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert set(children) == {"ingest", "validate", "tokenize"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    for tag in ("prefect.flow_run_id", "mlflow.source.git.commit", "lifecycle.config_hash"):
        assert parent.data.tags[tag] and all(c.data.tags[tag] for c in children.values())
    assert children["tokenize"].data.tags["lifecycle.input.ingest"] == first["ingest"]["key"]
    assert children["ingest"].data.tags["lifecycle.input.source.stdlib"]
    assert children["tokenize"].data.metrics["tokenize/bytes_per_token"] > 1.5
    assert children["ingest"].data.metrics["ingest/documents"] >= 10
    client = MlflowClient(tracking_uri(state))
    artifacts = {a.path for a in client.list_artifacts(children["validate"].info.run_id)}
    assert {"data_docs", "validation"} <= artifacts
    assert "tokenizer/tokenizer.json" in {a.path for a in client.list_artifacts(children["tokenize"].info.run_id,
                                                                              "tokenizer")}
    inputs = children["ingest"].inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"documents-train", "documents-validation"}
    assert all(i.dataset.digest for i in inputs)

    # nothing changed: every stage is a cache hit and no artifact is rewritten
    manifest = Path(first["tokenize"]["path"], "_lifecycle.json")
    written = manifest.stat().st_mtime_ns
    second = run(state, conf_dir, tiny_overrides, until="tokenize")
    assert all(out["cached"] for out in second.values())
    assert {s: o["key"] for s, o in second.items()} == {s: o["key"] for s, o in first.items()}
    assert manifest.stat().st_mtime_ns == written
    hits = [r for r in child_runs(state) if r.data.tags.get("lifecycle.cache_hit") == "true"]
    assert {r.data.tags["lifecycle.stage"] for r in hits} == {"ingest", "validate", "tokenize"}

    # one stage's config changed: that stage recomputes, the ones before it stay cached
    third = run(state, conf_dir, tiny_overrides + ["tokenize.vocab_size=350"], until="tokenize")
    assert third["ingest"]["cached"] and third["validate"]["cached"] and not third["tokenize"]["cached"]

    # --from tokenize: earlier stages reused without running, tokenize recomputed
    before = len(child_runs(state))
    fourth = run(state, conf_dir, tiny_overrides, until="tokenize", from_stage="tokenize")
    assert not fourth["tokenize"]["cached"] and fourth["tokenize"]["key"] == first["tokenize"]["key"]
    assert len(child_runs(state)) == before + 2  # the parent run and the tokenize child only


def test_until_ingest_runs_ingest_alone_and_from_needs_a_cache(tmp_path: Path, conf_dir: Path,
                                                              tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"
    with pytest.raises(LifecycleError, match=r"--from: stage 'ingest' has no cached output .*run without --from"):
        run(state, conf_dir, tiny_overrides, until="tokenize", from_stage="tokenize")
    assert not list((state / "artifacts").glob("*/*"))
    only = run(state, conf_dir, tiny_overrides, until="ingest")
    assert list(only) == ["ingest"] and not only["ingest"]["cached"]
    assert {r.data.tags.get("lifecycle.stage") for r in child_runs(state)} == {None, "ingest"}  # parents + ingest


def test_failed_validation_stops_the_pipeline(tmp_path: Path, conf_dir: Path, tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between: observed \d+"):
        run(state, conf_dir, tiny_overrides + ["validate.min_documents=100000"], until="tokenize")
    runs = child_runs(state)
    stages = {r.data.tags.get("lifecycle.stage"): r for r in runs}
    assert "tokenize" not in stages, [(r.info.run_name, r.data.tags.get("lifecycle.stage")) for r in runs]
    assert stages["validate"].info.status == "FAILED"
    assert stages["validate"].data.tags["lifecycle.validation"] == "failed"
    assert stages[None].info.status == "FAILED"  # the parent run
    assert not (state / "artifacts" / "validate").exists() or not [
        p for p in (state / "artifacts" / "validate").iterdir()]
    assert not (state / "artifacts" / "tokenize").exists()
    assert "data_docs" in {a.path for a in MlflowClient(tracking_uri(state)).list_artifacts(
        stages["validate"].info.run_id)}


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIFECYCLE_CONF": str(Path(__file__).resolve().parents[2] / "conf")}
    env.pop("PREFECT_HOME", None)
    return subprocess.run([sys.executable, "-m", "lifecycle.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_user_errors_are_clear_and_leave_nothing(tmp_path: Path) -> None:
    bad = cli(["run", "--set", "tokenize.vocab_sise=3", "--state-dir", "st"], tmp_path)
    assert bad.returncode == 2 and "tokenize.vocab_sise = 3: unknown key" in bad.stderr
    assert not (tmp_path / "st").exists()  # failed before any work

    missing = cli(["run", "--source", "nowhere/*.txt", "--state-dir", "st"], tmp_path)
    assert missing.returncode == 2 and "glob 'nowhere/*.txt' matched no supported files" in missing.stderr

    rows = [json.dumps({"text": f"document {i} " * 20}) for i in range(5)] + ['{"text": broken']
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n")
    broken = cli(["run", "--source", "data.jsonl", "--until", "tokenize", "--state-dir", "st"], tmp_path)
    assert broken.returncode == 2
    assert "error: data.jsonl:6: not valid JSON" in broken.stderr
    assert "Traceback" not in broken.stderr + broken.stdout
    assert not any((tmp_path / "st" / "artifacts").glob("*/*"))  # nothing half-written

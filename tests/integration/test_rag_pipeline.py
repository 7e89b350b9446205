"""The rag_index stage in the real flow: `--until rag_index` runs ingest + validate + rag_index only, the
index is logged to MLflow with retrieval metrics, a re-run is a cache hit, the stage run alone as its own
flow pairs the index with the model it is given by reference, a corpus change embeds nothing already
indexed, and `lifecycle search` / `ask` work on the result."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from flows.stages import FLOWS
from lifecycle.cli import main
from lifecycle.config import load_config
from lifecycle.model import load_causal_lm
from lifecycle.rag.search import open_current, read_current
from lifecycle.runtime import RunSettings
from lifecycle.tracking import setup_mlflow, tracking_uri
from tests.unit.test_rag_answer import save_tiny_policy

pytestmark = pytest.mark.integration
RAG = ["rag_index.evaluate.max_questions=20", "rag_index.ann.min_rows=100000"]


def rag_runs(state: Path) -> list:
    client = MlflowClient(tracking_uri(state))
    exp = client.get_experiment_by_name("llm-lifecycle")
    return client.search_runs([exp.experiment_id], "tags.`lifecycle.stage` = 'rag_index'",
                              order_by=["attributes.start_time ASC"])


def register_policy(state: Path, policy: Path, name: str) -> None:
    """A chat model stand-in, registered and marked @candidate as a pipeline run would."""
    experiment_id = setup_mlflow(state, "llm-lifecycle")
    model, tok = load_causal_lm(policy)
    with mlflow.start_run(run_name="sft-stand-in", experiment_id=experiment_id):
        mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="policy", task="text-generation",
                                      registered_model_name=name, pip_requirements=["transformers"])
    MlflowClient().set_registered_model_alias(name, "candidate", "1")


def test_rag_index_stage_search_and_ask(tmp_path: Path, conf_dir: Path, tiny_overrides: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    overrides = tiny_overrides + RAG
    name = load_config(conf_dir, overrides=overrides).run.models.chat
    policy = save_tiny_policy(tmp_path / "policy")
    register_policy(state, policy, name)

    first = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="rag_index")
    assert list(first) == ["ingest", "validate", "rag_index"] and not first["rag_index"]["cached"]
    run = rag_runs(state)[-1]
    metrics = run.data.metrics
    assert metrics["rag_index/embedded_chunks"] == metrics["rag_index/rows"] > 50
    assert metrics["rag_index/reused_chunks"] == 0 and metrics["rag_index/eval_questions"] == 20
    for mode in ("dense", "fts", "hybrid"):
        assert 0.5 <= metrics[f"rag_index/{mode}_recall_at_10"] <= 1 and metrics[f"rag_index/{mode}_mrr"] > 0.3
    assert run.data.tags["lifecycle.input.ingest"] == first["ingest"]["key"]
    assert run.data.tags["lifecycle.paired_model"] == "none"  # no chat model in this run: nothing guessed
    assert "lifecycle.rag_index_key" not in MlflowClient(tracking_uri(state)).get_model_version(name, "1").tags
    alone = FLOWS["rag_index"](settings=RunSettings(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir)),
                           model=f"{name}@candidate")
    assert alone.cached and alone.key == first["rag_index"]["key"]
    version_tags = MlflowClient(tracking_uri(state)).get_model_version(name, "1").tags
    assert version_tags["lifecycle.rag_index_key"] == first["rag_index"]["key"]
    assert version_tags["lifecycle.rag_index_version"] == str(int(metrics["rag_index/table_version"]))
    assert "rag_index/retrieval_eval.json" in {a.path for a in MlflowClient(tracking_uri(state)).list_artifacts(
        run.info.run_id, "rag_index")}
    first_index = read_current(state)
    assert first_index["key"] == first["rag_index"]["key"] and first_index["rows"] == metrics["rag_index/rows"]

    again = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="rag_index")
    assert again["rag_index"]["cached"] and again["rag_index"]["key"] == first["rag_index"]["key"]

    smaller = [o.replace(", fnmatch]", "]") for o in overrides]
    changed = pipeline(overrides=smaller, state_dir=str(state), conf_dir=str(conf_dir), until="rag_index")
    metrics = rag_runs(state)[-1].data.metrics
    assert not changed["rag_index"]["cached"]
    assert metrics["rag_index/embedded_chunks"] == 0 and metrics["rag_index/deleted_chunks"] > 0
    assert metrics["rag_index/reused_chunks"] == metrics["rag_index/rows"]
    assert read_current(state)["version"] > first_index["version"]

    cfg = load_config(conf_dir, overrides=overrides).serve.search
    assert all(h.source == "stdlib" for h in open_current(state, cfg).search("fnmatch pattern", k=3))
    assert main(["search", "Serialize obj to a JSON formatted str", "--state-dir", str(state), "--conf",
                 str(conf_dir), "--mode", "fts", "--title-prefix", "json.", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(h["title"].startswith("json.") for h in hits)
    assert main(["ask", "What does json.dumps do?", "--state-dir", str(state), "--conf", str(conf_dir),
                 "--json"]) == 0  # the registered model @candidate (no --model)
    answer = json.loads(capsys.readouterr().out)
    assert answer["sources"] and answer["model"] == f"{name}@candidate (version 1)"
    assert main(["ask", "What does json.dumps do?", "--state-dir", str(state), "--conf", str(conf_dir),
                 "--model", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == answer["answer"]  # same weights, greedy

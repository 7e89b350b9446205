"""The pretrain stage in the real pipeline flow (tiny corpus, tiny model): MLflow child run with training
curves and the bits-per-byte summary, a registered model version with lineage tags and no alias, handed
on by reference in the stage's output, a `from_pretrained`-ready output, checkpoints cleaned up, and a
cache hit (no new version) on re-run; the same through torchrun with two processes; and two "nodes" (two
pipelines on this machine, each with its own state dir) where node 0 registers and node 1 only trains."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from flows.pipeline import pipeline
from lifecycle.tracking import tracking_uri
from tests.integration.conftest import TINY_PRETRAIN
from tests.pretrain_fixtures import ROOT

pytestmark = pytest.mark.integration


def test_pretrain_stage_tracks_registers_and_caches(tmp_path: Path, conf_dir: Path,
                                                    tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"
    overrides = tiny_overrides + TINY_PRETRAIN
    first = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="pretrain")
    out = first["pretrain"]
    assert not out["cached"] and out["metrics"]["val_bpb"] < out["metrics"]["unigram_bpb"]
    assert out["model"] == {"name": "lifecycle-gpt-base", "version": "1"}
    model_dir = Path(out["path"], "model")
    AutoModelForCausalLM.from_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(model_dir))
    assert not (state / "checkpoints" / "pretrain" / out["key"]).exists()  # removed after success

    client = MlflowClient(tracking_uri(state))
    run = client.get_run(out["run_id"])
    assert run.data.tags["lifecycle.input.tokenize"] == first["tokenize"]["key"]
    for name in ("pretrain/val_bpb", "pretrain/unigram_bpb", "pretrain/final_loss", "pretrain/tokens_per_s",
                 "pretrain/mfu", "pretrain/train/loss", "pretrain/train/lr", "pretrain/train/grad_norm",
                 "pretrain/train/tokens_per_s", "pretrain/train/mfu", "pretrain/train/mem_gb", "pretrain/eval/val_bpb"):
        assert name in run.data.metrics, name
    curve = client.get_metric_history(out["run_id"], "pretrain/train/loss")
    assert [m.step for m in curve] == [10, 20, 30, 40, 50, 60] and curve[-1].value < curve[0].value
    assert any(a.path == "pretrain" for a in client.list_artifacts(out["run_id"]))

    versions = client.search_model_versions("name='lifecycle-gpt-base'")
    assert len(versions) == 1
    version = versions[0]
    assert version.run_id == out["run_id"]
    assert version.tags["lifecycle.data_key"] == first["ingest"]["key"]
    assert version.tags["lifecycle.tokenizer_key"] == first["tokenize"]["key"]
    assert version.tags["lifecycle.stage_key"] == out["key"]
    assert version.tags["lifecycle.config_hash"] == run.data.tags["lifecycle.pipeline_config_hash"]
    assert not client.get_registered_model("lifecycle-gpt-base").aliases  # promotion moves aliases, not training

    second = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="pretrain")
    assert second["pretrain"]["cached"] and second["pretrain"]["key"] == out["key"]
    assert second["pretrain"]["model"] == out["model"]  # the cached output hands on the same version
    assert len(client.search_model_versions("name='lifecycle-gpt-base'")) == 1


@pytest.mark.slow
def test_pretrain_stage_under_torchrun_reads_its_metrics_back(tmp_path: Path, conf_dir: Path,
                                                              tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"
    overrides = tiny_overrides + TINY_PRETRAIN + ["pretrain.distributed.nproc=2", "pretrain.distributed.backend=gloo",
                                                  "pretrain.micro_batch_size=4", "pretrain.num_threads=1"]
    out = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="pretrain")["pretrain"]
    assert out["metrics"]["world_size"] == 2 and out["metrics"]["val_bpb"] < out["metrics"]["unigram_bpb"]
    client = MlflowClient(tracking_uri(state))
    curve = client.get_metric_history(out["run_id"], "pretrain/train/loss")  # logged by rank 0 to the stage's run
    assert [m.step for m in curve] == [10, 20, 30, 40, 50, 60] and curve[-1].value < curve[0].value
    assert client.get_run(out["run_id"]).data.metrics["pretrain/world_size"] == 2
    assert out["model"]["name"] == "lifecycle-gpt-base"
    AutoModelForCausalLM.from_pretrained(str(Path(out["path"], "model")))


@pytest.mark.slow
def test_two_nodes_train_together_and_node_0_alone_registers(tmp_path: Path, conf_dir: Path,
                                                             tiny_overrides: list[str]) -> None:
    """Two pipelines, one in a `lifecycle run` process, each tokenizing the corpus itself and starting torchrun:
    most of a minute."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = tiny_overrides + TINY_PRETRAIN + [
        "pretrain.max_steps=12", "pretrain.eval_every=0", "pretrain.micro_batch_size=4", "pretrain.num_threads=1",
        "pretrain.distributed.backend=gloo", "pretrain.distributed.nnodes=2",
        f"pretrain.distributed.rdzv_endpoint=127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_HOME"))}
    node1 = subprocess.Popen(  # its own state dir: it tokenizes the same sources itself
        [sys.executable, "-m", "lifecycle.cli", "run", "--until", "pretrain", "--state-dir", str(tmp_path / "node1"),
         "--conf", str(conf_dir), *(f"--set={o}" for o in [*overrides, "pretrain.distributed.node_rank=1"])],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = pipeline(overrides=overrides, state_dir=str(tmp_path / "node0"), conf_dir=str(conf_dir),
                       until="pretrain")["pretrain"]
        log = node1.communicate(timeout=300)[0]
    finally:
        node1.kill()
    assert node1.returncode == 0, log[-3000:]
    assert out["model"]["name"] == "lifecycle-gpt-base" and out["metrics"]["world_size"] == 2
    client1 = MlflowClient(tracking_uri(tmp_path / "node1"), registry_uri=tracking_uri(tmp_path / "node1"))
    assert client1.search_model_versions("name='lifecycle-gpt-base'") == []  # node 1 registered nothing
    assert not list((tmp_path / "node1" / "artifacts" / "pretrain").iterdir())  # and committed nothing
    runs = client1.search_runs([client1.get_experiment_by_name("llm-lifecycle").experiment_id],
                               filter_string="tags.`lifecycle.stage` = 'pretrain'")
    assert [r.data.tags["lifecycle.key"] for r in runs] == [out["key"]]  # the same key on both nodes
    assert runs[0].data.metrics["pretrain/node_rank"] == 1

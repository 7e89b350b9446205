"""Scale-out on CPU: two torchrun processes (gloo) with half the batch each follow the same loss curve as
one process with the whole batch and the same seed, with DDP and with FSDP; and so do two "nodes" (two
torchrun agents on this machine meeting at a static rendezvous), where node 0 runs global rank 0 and
alone writes the model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.train.distributed import torchrun_command
from tests.pretrain_fixtures import ROOT, make_tokenized, tiny_pretrain_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(data: Path, out: Path, nproc: int, micro_batch_size: int, strategy: str = "ddp") -> list[float]:
    cfg = tiny_pretrain_config(max_steps=12, batch_size=8, micro_batch_size=micro_batch_size, log_every=4,
                               distributed={"nproc": nproc, "strategy": strategy, "backend": "gloo"})
    spec = out.with_suffix(".json")
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"seed": 7, "pretrain": cfg.model_dump(mode="json")}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "lifecycle.train.pretrain", "--data", str(data),
           "--config", str(spec), "--out", str(out), "--checkpoints", str(out.with_name(out.name + "-ckpt"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((out / "train_log.json").read_text())["losses"]


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_tokenized(tmp / "data")
    return data, run(data, tmp / "single", nproc=1, micro_batch_size=8)


@pytest.mark.parametrize(("strategy", "micro"), [("ddp", 2), ("fsdp", 4)])
def test_two_processes_match_one_process_with_the_same_global_batch(
        tmp_path: Path, data_and_reference: tuple[Path, list[float]], strategy: str, micro: int) -> None:
    data, single = data_and_reference
    # ddp with micro-batch 2 also exercises gradient accumulation (2 micro-batches per process and step)
    double = run(data, tmp_path / strategy, nproc=2, micro_batch_size=micro, strategy=strategy)
    assert len(single) == len(double) == 12
    assert single[-1] < single[0] - 0.5  # it trains at all
    assert double == pytest.approx(single, rel=1e-4)
    assert (tmp_path / strategy / "model" / "model.safetensors").is_file()


def run_two_nodes(data: Path, tmp: Path, shared_checkpoints: bool) -> list[tuple[int, str]]:
    """Two torchrun agents ("nodes", one process each) meeting at a static rendezvous on this machine, each
    with its own output folder; (exit code, output) of each."""
    with socket.socket() as s:  # a free port for node 0's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    nodes = []
    for rank in (0, 1):
        cfg = tiny_pretrain_config(max_steps=12, batch_size=8, micro_batch_size=4, log_every=4, checkpoint_every=6,
                                   distributed={"nproc": 1, "nnodes": 2, "node_rank": rank, "backend": "gloo",
                                                "rdzv_endpoint": f"127.0.0.1:{port}"})
        spec = tmp / f"node{rank}.json"
        spec.write_text(json.dumps({"seed": 7, "pretrain": cfg.model_dump(mode="json")}))
        ckpt = tmp / ("ckpt" if shared_checkpoints else f"ckpt{rank}")
        cmd = torchrun_command("lifecycle.train.pretrain", ["--data", str(data), "--config", str(spec), "--out",
                                                            str(tmp / f"out{rank}"), "--checkpoints", str(ckpt)],
                               cfg.distributed, "test-two-nodes")
        with open(tmp / f"node{rank}.log", "w") as log:  # files, not pipes: neither node blocks on a full one
            nodes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:  # a node that hangs: stopped (torchrun stops its workers on SIGTERM), not left running
            if node.poll() is None:
                node.terminate()
                try:
                    node.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
    return [(code, (tmp / f"node{rank}.log").read_text()) for rank, code in enumerate(codes)]


def test_two_nodes_meet_at_the_rendezvous_and_node_0_runs_rank_0(
        tmp_path: Path, data_and_reference: tuple[Path, list[float]]) -> None:
    data, single = data_and_reference
    (code0, log0), (code1, log1) = run_two_nodes(data, tmp_path, shared_checkpoints=True)
    assert (code0, code1) == (0, 0), log0[-2000:] + log1[-2000:]
    assert json.loads((tmp_path / "out0" / "train_log.json").read_text())["losses"] == pytest.approx(single, rel=1e-4)
    assert not (tmp_path / "out1").exists()  # global rank 0 is on node 0: node 1 writes nothing
    assert json.loads((tmp_path / "ckpt" / "step-000006" / "meta.json").read_text())["world_size"] == 2


def test_checkpoints_a_node_cannot_see_fail_with_the_folder_named(
        tmp_path: Path, data_and_reference: tuple[Path, list[float]]) -> None:
    (code0, _), (code1, log1) = run_two_nodes(data_and_reference[0], tmp_path, shared_checkpoints=False)
    assert code0 != 0 and code1 != 0  # node 0 stops too (its peer is gone), instead of waiting
    assert f"checkpoint folder {tmp_path / 'ckpt1'} is not shared with rank 0's node" in log1

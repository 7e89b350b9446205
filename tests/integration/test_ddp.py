"""Scale-out on CPU: two torchrun processes (gloo) with half the batch each follow the same loss curve as
one process with the whole batch and the same seed, with DDP and with FSDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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

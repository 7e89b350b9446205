"""Kill -9 in the middle of pretraining, re-run the same command: it resumes from the newest checkpoint
and ends bit-identical to an uninterrupted run with the same seed (CPU fp32, one thread, deterministic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pretrain_fixtures import ROOT, make_tokenized, tiny_pretrain_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 240  # long enough (several seconds) that the kill lands well before the end


def command(data: Path, out: Path, ckpt: Path) -> list[str]:
    cfg = tiny_pretrain_config(max_steps=STEPS, batch_size=16, micro_batch_size=16, checkpoint_every=10,
                               keep_checkpoints=2, log_every=10, eval_every=120, eval_batches=2)
    spec = json.dumps({"seed": 1337, "pretrain": cfg.model_dump(mode="json")})
    return [sys.executable, "-m", "lifecycle.train.pretrain", "--data", str(data), "--config", spec,
            "--out", str(out), "--checkpoints", str(ckpt)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_to_end(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """Three training processes of STEPS steps (the reference, the killed one, the resumed one): long enough
    that the kill lands well before the end."""
    data = make_tokenized(tmp_path / "data")
    reference = run_to_end(command(data, tmp_path / "ref", tmp_path / "ref-ckpt"))
    assert reference["resumed_from_step"] == 0

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    cmd = command(data, out, ckpt)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 120
    while not list(ckpt.glob("step-*/meta.json")):  # poll for the first complete checkpoint
        assert proc.poll() is None, "the training process ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "the run finished before the kill; raise STEPS"

    resumed = run_to_end(cmd)  # the same command again
    assert 0 < resumed["resumed_from_step"] < STEPS
    assert resumed["final_loss"] == reference["final_loss"]
    assert resumed["val_loss"] == reference["val_loss"]
    log_ref = json.loads((tmp_path / "ref" / "train_log.json").read_text())["losses"]
    log_resumed = json.loads((out / "train_log.json").read_text())["losses"]
    assert len(log_resumed) == STEPS and log_resumed == log_ref

"""Checkpoints: a save/load round trip restores weights (tied ones too), optimizer, scheduler, loop state
and RNG streams; saving is atomic (a crash mid-save leaves the previous checkpoint as the newest); only
the newest `keep` survive; a checkpoint of another model is refused with its path in the message; a
truncated or tampered checkpoint is skipped, named, for the one before it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lifecycle.errors import LifecycleError
from lifecycle.model import build_model
from lifecycle.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lifecycle.train.distributed import DistInfo
from lifecycle.train.trainer import Trainer, build_trainer
from tests.pretrain_fixtures import tiny_pretrain_config

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def make(seed: int, **model: object) -> Trainer:
    cfg = tiny_pretrain_config(model=model)
    torch.manual_seed(seed)
    return build_trainer(cfg, build_model(cfg.model, 320, 33, 1, 0), SINGLE)


def take_steps(trainer: Trainer, n: int) -> None:
    for _ in range(n):
        trainer.step([torch.randint(0, 320, (4, 33))])


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    a = make(0)
    take_steps(a, 3)
    state = {"step": 3, "tokens_seen": 384, "losses": [5.0, 4.0, 3.0]}
    path = save_checkpoint(tmp_path, 3, a.model, a.optimizer, a.scheduler, state, SINGLE, "ddp", keep=2)
    after_save = (torch.rand(3), random.random(), np.random.rand())

    b = make(1)  # different weights, fresh optimizer
    loaded = load_checkpoint(path, b.model, b.optimizer, b.scheduler, SINGLE, "ddp")
    assert loaded == state
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == after_save[1:]
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert b.model.lm_head.weight is b.model.model.embed_tokens.weight  # still tied
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == 3 and b.lr == a.lr
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)

    batches = [torch.randint(0, 320, (4, 33)) for _ in range(2)]
    for batch in batches:  # both continue identically from here
        la, _ = a.step([batch])
        lb, _ = b.step([batch])
        assert torch.equal(la, lb)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # a tied weight is stored once


def test_rng_state_is_restored_exactly(tmp_path: Path) -> None:
    a = make(0)
    path = save_checkpoint(tmp_path, 1, a.model, a.optimizer, a.scheduler, {"step": 1}, SINGLE, "ddp", keep=1)
    expected = (torch.randn(4), random.random(), np.random.rand(3))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    load_checkpoint(path, a.model, a.optimizer, a.scheduler, SINGLE, "ddp")
    got = (torch.randn(4), random.random(), np.random.rand(3))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = make(0)
    save_checkpoint(tmp_path, 10, t.model, t.optimizer, t.scheduler, {"step": 10}, SINGLE, "ddp", keep=3)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed between writing and renaming")

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 20, t.model, t.optimizer, t.scheduler, {"step": 20}, SINGLE, "ddp", keep=3)
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step-000020").is_dir()  # the half-finished one is invisible ...
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000010"  # ... and resume picks the complete one
    save_checkpoint(tmp_path, 20, t.model, t.optimizer, t.scheduler, {"step": 20}, SINGLE, "ddp", keep=3)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000020"
    assert not (tmp_path / ".tmp-step-000020").exists()


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    t = make(0)
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, t.model, t.optimizer, t.scheduler, {"step": step}, SINGLE, "ddp", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000015", "step-000020"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    t = make(0)
    path = save_checkpoint(tmp_path, 1, t.model, t.optimizer, t.scheduler, {"step": 1}, SINGLE, "ddp", keep=1)
    other = make(0, arch="gpt2")
    with pytest.raises(LifecycleError, match=f"checkpoint {path} does not fit the configured model"):
        load_checkpoint(path, other.model, other.optimizer, other.scheduler, SINGLE, "ddp")


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete"])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            damage: str) -> None:
    t = make(0)
    for step in (10, 20):
        save_checkpoint(tmp_path, step, t.model, t.optimizer, t.scheduler, {"step": step}, SINGLE, "ddp", keep=2)
    weights = tmp_path / "step-000020" / "model.safetensors"
    blob = weights.read_bytes()
    if damage == "truncate":  # a disk that filled up, a copy cut short
        weights.write_bytes(blob[: len(blob) // 2])
    elif damage == "tamper":  # same size, one byte changed
        weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    else:
        (tmp_path / "step-000020" / "state.pt").unlink()
    with caplog.at_level("WARNING", logger="lifecycle.train"):
        found = latest_checkpoint(tmp_path)
    assert found == tmp_path / "step-000010"
    expected = {"truncate": f"model.safetensors: {len(blob) // 2} bytes, expected {len(blob)}",
                "tamper": "model.safetensors: content changed", "delete": "state.pt: missing"}[damage]
    assert f"checkpoint {tmp_path / 'step-000020'} is damaged ({expected}" in caplog.text
    b = make(1)
    assert load_checkpoint(found, b.model, b.optimizer, b.scheduler, SINGLE, "ddp")["step"] == 10

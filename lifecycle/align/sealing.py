"""Checkpoints of the Hugging Face trainers (SFT, reward model, policy, DPO) that can be trusted on resume.

The Trainer writes `checkpoint-<step>/` in place, file by file, so a run killed while saving leaves a
half-written folder that `get_last_checkpoint` would pick. `SealCheckpoints` seals each folder once the
Trainer has finished it (lifecycle/manifest.py: every file's size and sha256); `last_intact_checkpoint`
returns the newest sealed folder whose files still match, naming and skipping the others.

    trainer = SFTTrainer(..., callbacks=[SealCheckpoints()])
    trainer.train(resume_from_checkpoint=last_intact_checkpoint(ckpt_dir, log))
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lifecycle.manifest import seal, unsealed_reason

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class SealCheckpoints(TrainerCallback):
    """Seal `checkpoint-<step>/` when the Trainer reports it saved (rank 0 only)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seal(folder)


def last_intact_checkpoint(folder: Path, log: logging.Logger) -> str | None:
    """The newest sealed, intact `checkpoint-<step>` under `folder` (None: start from the beginning)."""
    steps = {int(m.group(1)): p for p in (Path(folder).iterdir() if Path(folder).is_dir() else [])
             if p.is_dir() and (m := CHECKPOINT.match(p.name))}
    for path in (steps[s] for s in sorted(steps, reverse=True)):
        reason = unsealed_reason(path)
        if reason is None:
            return str(path)
        log.warning("checkpoint %s cannot be resumed from: %s; skipping it", path, reason)
    return None

"""Resumable training checkpoints, written atomically.

`<root>/step-000200/` holds model.safetensors (weights), state.pt (optimizer, scheduler, data position,
loss history; torch.save, loaded with weights_only=True), rng-rank<r>.pt (every rank's RNG states as
tensors) and meta.json (human-readable). Everything is written into `<root>/.tmp-step-000200/` first
and renamed into place when complete, so a process killed mid-save (kill -9) leaves either the old
checkpoint or the new one, never half of one. A seal (lifecycle/manifest.py) records every file's size and
sha256; a checkpoint truncated or changed since is skipped, with a warning, for the one before it. Only the
newest `keep` checkpoints stay.

    save_checkpoint(root, step, model, optimizer, scheduler, state, dist, strategy, keep=2)
    path = latest_checkpoint(root)     # None on a fresh start
    state = load_checkpoint(path, model, optimizer, scheduler, dist, strategy)
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.manifest import SEAL, seal, unsealed_reason
from lifecycle.train.distributed import DistInfo, barrier, unwrap

log = logging.getLogger("lifecycle.train")
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG the loop may touch, as tensors (so weights_only loading accepts them)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python_mt": torch.tensor(mt, dtype=torch.int64),
             "python_meta": torch.tensor([version, float("nan") if gauss is None else gauss], dtype=torch.float64),
             "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_meta": torch.tensor([pos, has_gauss, cached], dtype=torch.float64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    version, gauss = state["python_meta"].tolist()
    random.setstate((int(version), tuple(state["python_mt"].tolist()), None if np.isnan(gauss) else gauss))
    pos, has_gauss, cached = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state(model: nn.Module, strategy: str, dist: DistInfo) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU; a collective under FSDP, so every rank must call it."""
    if dist.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, dist: DistInfo) -> dict:
    if dist.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def _unique_tensors(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied embeddings): keep one name, record the aliases."""
    seen: dict[tuple[int, int], str] = {}
    unique, aliases = {}, {}
    for name, t in weights.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.contiguous()
    return unique, aliases


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any], dist: DistInfo,
                    strategy: str, keep: int) -> Path:
    """Write checkpoint `step` atomically (collective: every rank calls it). Returns its final path."""
    root = Path(root)
    tmp, final = root / f".tmp-step-{step:06d}", root / f"step-{step:06d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    barrier(dist)
    if not tmp.is_dir():  # another node: rank 0 made it on storage this node does not see
        raise LifecycleError(f"checkpoint folder {root} is not shared with rank 0's node (rank {dist.rank} cannot see "
                             f"{tmp.name}): a multi-node run checkpoints to the state dir on shared storage, or set "
                             "checkpoint_every: 0")
    torch.save(rng_state(), tmp / f"rng-rank{dist.rank}.pt")
    weights = model_state(model, strategy, dist)
    optim = _optimizer_state(model, optimizer, strategy, dist)
    barrier(dist)  # every rank's RNG file is written before rank 0 seals the folder
    if dist.is_main:
        unique, aliases = _unique_tensors(weights)
        save_file(unique, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), **state}, tmp / "state.pt")
        meta = {"step": step, "world_size": dist.world_size, "strategy": strategy if dist.enabled else "single",
                **{k: v for k, v in state.items() if not isinstance(v, list)}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        seal(tmp)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in _step_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir() if path.is_dir() else []:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(root: Path) -> list[Path]:
    found = [p for p in Path(root).iterdir() if p.is_dir() and STEP_DIR.match(p.name)] if Path(root).is_dir() else []
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest intact checkpoint under `root` (only complete ones are ever renamed into place; one whose
    files no longer match its seal is skipped with a warning). Checkpoints from before seals are trusted."""
    for path in reversed([p for p in _step_dirs(root) if (p / "meta.json").is_file()]):
        reason = unsealed_reason(path) if (path / SEAL).is_file() else None
        if reason is None:
            return path
        log.warning("checkpoint %s is damaged (%s): skipping it", path, reason)
    return None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, dist: DistInfo, strategy: str) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the loop state saved with them."""
    try:
        weights = load_file(str(path / "model.safetensors"))
        saved = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except (OSError, RuntimeError) as err:
        raise LifecycleError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from None
    if dist.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=saved["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
    else:
        missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
        tied = {name for name in missing if name in _aliases(path)}
        if set(missing) - tied or unexpected:
            raise LifecycleError(f"checkpoint {path} does not fit the configured model: missing "
                                 f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = path / f"rng-rank{dist.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning("checkpoint %s has no RNG state for rank %d (world size changed?)", path, dist.rank)
    return {k: v for k, v in saved.items() if k not in ("optimizer", "scheduler")}


def _aliases(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("aliases", "{}"))

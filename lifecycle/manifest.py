"""Content manifests: the size and sha256 of every file in a folder, taken when the folder is complete and
checked before it is trusted again, so a truncated or tampered artifact or checkpoint is found, named and
refused (or recomputed) instead of being loaded. Small JSON files are written atomically.

    files = hash_tree(folder, skip={"_lifecycle.json"})      # {"model.safetensors": {"size": .., "sha256": ..}}
    problems = check_tree(folder, files)                       # [] or ["model.safetensors: 120 bytes, expected 4096"]
    write_json_atomic(folder / "index.json", {...})            # a temporary file, fsynced, then renamed
    write_bytes_atomic(folder / "part.npy", data)              # the same, for bytes
    seal(checkpoint_dir); unsealed_reason(checkpoint_dir)      # a manifest file of its own, for checkpoints
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from lifecycle.hashing import file_sha256

SEAL = "_lifecycle_seal.json"  # in a checkpoint folder: written last, so its presence means "complete"


def hash_tree(folder: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file under `folder` (not following links), sorted."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel in skip or not path.is_file() or path.is_symlink():
            continue
        found[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return found


def tree_digest(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 for a whole `hash_tree` (what a registry tag can hold)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def check_tree(folder: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """What differs from `files` (a `hash_tree` taken earlier): missing files, wrong sizes (a truncation),
    changed contents (a tamper). Sizes are checked first, so a truncation costs no hashing."""
    folder = Path(folder)
    problems = []
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (size := path.stat().st_size) != want["size"]:
            problems.append(f"{rel}: {size} bytes, expected {want['size']}")
    if problems:
        return problems
    for rel, want in files.items():
        if (seen := file_sha256(folder / rel)) != want["sha256"]:
            problems.append(f"{rel}: content changed (sha256 {seen[:12]}..., expected {want['sha256'][:12]}...)")
    return problems


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder (fsynced, then renamed), so a
    reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON (indented) to `path` atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, json.dumps(data, indent=2).encode("utf-8"))


def seal(folder: Path) -> None:
    """Record the content of a finished checkpoint folder (its seal is written last)."""
    write_json_atomic(Path(folder) / SEAL, {"files": hash_tree(folder, skip={SEAL})})


def unsealed_reason(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted (None when it can): no seal (a save that did not
    finish), or files that differ from the seal."""
    seal_file = Path(folder) / SEAL
    if not seal_file.is_file():
        return "incomplete (no seal: the save did not finish)"
    try:
        files = json.loads(seal_file.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"its seal {seal_file} is unreadable ({err})"
    problems = check_tree(folder, files)
    return "; ".join(problems[:3]) if problems else None

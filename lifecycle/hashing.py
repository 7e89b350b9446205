"""Content hashes: of JSON-able values (config sections, cache keys) and of source code (a stage's
modules), so a cache key changes exactly when what produced an output could have changed.

    hash_json({"vocab_size": 512})                     # 16 hex chars, independent of key order
    hash_modules(["lifecycle.tokenizer"])              # hash of the modules' source files, nothing imported
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def hash_json(value: Any) -> str:
    """Stable content hash of JSON-able data (16 hex chars)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_modules(names: Iterable[str]) -> str:
    """Hash of the source files of the named modules (found, not imported)."""
    digest = hashlib.sha256()
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ModuleNotFoundError(f"stage code module '{name}' not found")
        digest.update(name.encode())
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes (64 hex chars), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """Content hash of one file (16 hex chars); a missing file is a user error naming the path."""
    from lifecycle.errors import InputError

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return file_sha256(path)[:16]

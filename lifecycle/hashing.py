"""Content hashes: of JSON-able values (config sections, cache keys) and of source code (the modules a
stage runs), so a cache key changes exactly when what produced an output could have changed.

    hash_json({"vocab_size": 512})                     # 16 hex chars, independent of key order
    code_closure("tasks.tokenize")                     # it and every lifecycle module it imports, at any depth
    hash_modules(code_closure("tasks.tokenize"))       # hash of those source files, nothing imported
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding lifecycle/ and tasks/
LIBRARY = "lifecycle"  # the package whose modules a closure follows


def hash_json(value: Any) -> str:
    """Stable content hash of JSON-able data (16 hex chars)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_modules(names: Iterable[str]) -> str:
    """Hash of the source files of the named project modules (found under ROOT, not imported)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(_module_file(name).read_bytes())
    return digest.hexdigest()[:16]


def code_closure(root: str) -> tuple[str, ...]:
    """`root` and every `lifecycle` module it imports, directly or through each other, at any depth:
    module-level imports and those inside functions alike (read from the source, nothing imported), with the
    packages each one's import runs (their `__init__`). Other `tasks` modules (the stage runtime) are not
    followed: they decide whether and where a stage runs, not what it computes."""
    found: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        path = _module_file(name)
        todo.extend(m for m in _imports(name, path, path.stat().st_mtime_ns) if m.split(".")[0] == LIBRARY)
    return tuple(sorted(found))


def _module_file(name: str) -> Path:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ModuleNotFoundError(f"stage code module '{name}' not found under {ROOT}")


@lru_cache(maxsize=4096)
def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@lru_cache(maxsize=1024)
def _imports(name: str, path: Path, mtime_ns: int) -> tuple[str, ...]:
    """The project modules `name` (at `path`) imports, with their parent packages; cached per file version."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {m for i in range(1, len(parts) + 1) if _is_module(m := ".".join(parts[:i]))}
    return tuple(sorted(found))


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
